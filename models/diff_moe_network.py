"""Diff-MoE network (seed 001): a multimodal Transformer whose every FFN is a mixture of experts.

Pure torch; the ``diff_moe`` family (data, training, registry) builds on it. The pieces, in the
seed's names:

- :class:`PatchEmbed` (conv patchify, CLS token, learned positions) and :class:`TextEmbed` (CLIP
  BPE ids → ``text_embed_dim`` embeddings projected to ``embed_dim``, learned positions, padding
  mask from id 0).
- :class:`UnifiedModalEncoder`, the block: pre-norm self-attention, then an FFN made of a
  ``global_expert`` on every token, the modality expert (``vision_expert`` or ``text_expert``) in
  single-modality layers, and the ``general_experts`` pool routed top-k by an
  :class:`~models.moe.AttentiveRouter`. The FFN output is the **mean** of its branches
  (``(global + modality + routed) / 3``, or ``/ 2`` in fusion layers), where ``routed`` is
  itself ``Σ_e w_e · expert_e(x)`` over the token's k experts with ``Σ w_e = 1``; so every branch
  has the scale of one expert and the update's scale does not grow with the number of branches.
- :class:`ImageEncoder`, :class:`TextEncoder`, :class:`CrossModalFusion` (image ↔ text
  cross-attention, then a block without modality experts over the joint sequence) and
  :class:`DiffMoENetwork`, the whole model.

Expert, router, dispatch and routing losses are those of :mod:`models.moe` (the seed's experts carry a
LayerNorm inside; here the block's pre-norm ``LN_2`` in front of all of them plays that part).

Which path uses what (no prediction depends on a row's label):

- ``encode_image(images)`` and ``forward(images)``: the image alone. ``logits = head(CLS)``.
- ``forward(images, class_tokens=...)`` or ``class_embeddings=...`` (the descriptions of *all*
  ``num_classes`` classes, the same tensor for every row): adds a prototype term, ``logits +=
  s · cos(image_embedding, class_embedding_c)`` for every class c. Label-independent, since every
  class is scored; the family passes the same class texts when fitting and predicting.
- ``forward(images, tokens=...)``: ``tokens`` is a text *paired* with each image (a caption, or
  at training time the row's own class description). It runs the text encoder and the fusion
  layers and adds ``text_embedding``, the fused features and the alignment and contrastive
  losses; it never reaches ``logits`` (the image path is computed first and alone). So
  classification predicts with images (and the class texts) only, and retrieval predicts with
  ``encode_image`` / ``encode_text`` embeddings; the fusion layers run only where a real pair is
  given: training-time alignment (``fused_image`` / ``fused_text`` are returned for a family that
  wants to score given pairs).
- ``forward(images, class_tokens=..., paired_class=labels)``: the same pairing with each row's
  class description, taken from the one encoding of the ``num_classes`` texts instead of
  encoding ``class_tokens[labels]`` again (``B`` texts where ``num_classes`` distinct ones exist).

The ``diff_moe`` family fits classification with
``out = net(images, class_tokens=class_tokens, paired_class=labels)`` and
``loss = F.cross_entropy(out.logits, labels) + out.aux["aux_loss"]``, and predicts with
``net(images, class_embeddings=net.encode_text(class_tokens)).logits``.

Shapes: ``B`` batch, ``C`` channels, ``H = W = img_size``, ``N = (img_size / patch_size)²`` patches
(``1 + N`` image tokens with CLS), ``L <= max_text_len`` text tokens, ``D = embed_dim``,
``E = num_general_experts``, ``k = top_k``, ``T`` routed tokens of a layer (every image token; the
non-padding text tokens). Deterministic on CPU under a fixed ``torch.manual_seed``.

The ``diff_moe`` family's config (:mod:`models.diff_moe`) holds a CPU-sized preset of these
hyper-parameters with its measured time per epoch; :class:`DiffMoEConfig` keeps the seed's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.config import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, check_fields
from harness.errors import HarnessError
from models.contrastive import info_nce_loss
from models.moe import (
    ACTIVATIONS,
    Expert,
    MixtureOfExperts,
    kl_balance_loss,
    router_z_loss,
    routing_entropy,
    squared_usage_loss,
)

__all__ = [
    "CLIP_VOCAB_SIZE",
    "CrossModalFusion",
    "DiffMoEConfig",
    "DiffMoENetwork",
    "DiffMoEOutput",
    "ImageEncoder",
    "PatchEmbed",
    "RoutingRecord",
    "TextEmbed",
    "TextEncoder",
    "UnifiedModalEncoder",
    "alignment_loss",
    "routing_report",
]

CLIP_VOCAB_SIZE = 49408  # open_clip's BPE vocabulary (SimpleTokenizer): 0 pads, 49406 starts, 49407 ends a text
Z_LOSSES = ("st_moe", "seed")  # the z-loss variants DiffMoEConfig.z_loss accepts
NON_NEGATIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffMoEConfig:
    """The network's hyper-parameters, with the seed's defaults; validated on construction."""

    img_size: int = 28  # image height = width in pixels; set from the data (seed: 28, Fashion-MNIST)
    in_channels: int = 1  # image channels; set from the data (1 grey, 3 RGB)
    patch_size: int = 4  # side of the square patches; must divide img_size
    num_classes: int = 10  # outputs of the classification head; set from the data
    embed_dim: int = 512  # width D of every token, expert output and of the shared image-text space
    expert_hidden_dim: int | None = None  # hidden width of every expert; None: 4 × embed_dim (the seed does not say)
    num_general_experts: int = 4  # routed experts per block (the general expert pool)
    top_k: int = 2  # general experts each token is routed to
    num_heads: int = 8  # attention heads; must divide embed_dim
    img_encoder_layers: int = 6  # UnifiedModalEncoder blocks over the image tokens
    text_encoder_layers: int = 4  # UnifiedModalEncoder blocks over the text tokens
    fusion_layers: int = 3  # cross-attention + joint block layers; 0: no fusion (losses on the encoders' features)
    dropout: float = 0.2  # on embeddings, residual branches, expert hidden layers, the head (and attention)
    attention_dropout: float | None = None  # on the attention weights; None: dropout (the seed); 0: much cheaper on CPU
    activation: str = "gelu"  # expert activation: gelu | relu | silu
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm
    initializer_range: float = 0.02  # std of the normal init of linear, conv, attention and embedding weights
    use_gradient_checkpointing: bool = True  # recompute each block in the backward pass (training only): less memory
    vocab_size: int = CLIP_VOCAB_SIZE  # token ids in [0, vocab_size); the CLIP BPE vocabulary (the seed says 50000)
    max_text_len: int = 32  # longest token sequence; tokenise with context_length=max_text_len
    text_embed_dim: int = 128  # width of the token embeddings before their projection to embed_dim
    router_temperature: float = 1.0  # divides the router logits (< 1: sharper routing)
    router_noise_std: float = 0.0  # std of the noise on router logits in training (noisy top-k); 0: off
    z_loss: str = "st_moe"  # "st_moe": mean logsumexp(logits)²; "seed": the seed's E·mean_e(P_e²) usage term
    router_z_loss_weight: float = 0.001  # weight of the z-loss, summed over layers
    router_balance_loss_weight: float = 0.01  # weight of KL(expert utilisation ‖ uniform), summed over layers
    cross_modal_alignment_weight: float = 0.1  # weight of -mean cos(mean-pooled fused image, text features)
    contrastive_loss_weight: float = 0.1  # weight of the symmetric InfoNCE of image and text embeddings
    init_temperature: float = 0.07  # initial InfoNCE / prototype temperature (CLIP's); learned, scale capped at 100

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """A one-line :class:`HarnessError` naming the first field out of range."""
        check_fields(self, POSITIVE_INT, "img_size", "in_channels", "patch_size", "num_classes", "embed_dim",
                     "num_general_experts", "top_k", "num_heads", "img_encoder_layers", "text_encoder_layers",
                     "vocab_size", "max_text_len", "text_embed_dim")  # fmt: skip
        check_fields(self, NON_NEGATIVE_INT, "fusion_layers")
        if self.expert_hidden_dim is not None:
            check_fields(self, POSITIVE_INT, "expert_hidden_dim")
        check_fields(self, FRACTION, "dropout")
        if self.attention_dropout is not None:
            check_fields(self, FRACTION, "attention_dropout")
        check_fields(self, POSITIVE, "layer_norm_eps", "initializer_range", "router_temperature", "init_temperature")
        check_fields(self, NON_NEGATIVE, "router_noise_std", "router_z_loss_weight", "router_balance_loss_weight",
                     "cross_modal_alignment_weight", "contrastive_loss_weight")  # fmt: skip
        check_fields(self, (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"), "activation")
        check_fields(self, (lambda v: v in Z_LOSSES, f"one of {', '.join(Z_LOSSES)}"), "z_loss")
        if self.img_size % self.patch_size:
            raise HarnessError(f"model.patch_size must divide model.img_size ({self.img_size}), got {self.patch_size}.")
        if self.embed_dim % self.num_heads:
            raise HarnessError(f"model.num_heads must divide model.embed_dim ({self.embed_dim}), got {self.num_heads}.")
        if self.top_k > self.num_general_experts:
            raise HarnessError(f"model.top_k must be <= model.num_general_experts ({self.num_general_experts}), "
                               f"got {self.top_k}.")  # fmt: skip


def _attention_dropout(config: DiffMoEConfig) -> float:
    return config.dropout if config.attention_dropout is None else config.attention_dropout



# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Images ``[B, C, H, W]`` → tokens ``[B, 1 + N, D]``: a CLS token, then the patches, plus learned positions.

    Patches are embedded by a ``patch_size``-strided convolution (one linear map per patch).
    """

    def __init__(self, img_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.proj(images).flatten(2).transpose(1, 2)  # [B, N, D]
        return torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], 1) + self.pos_embed


class TextEmbed(nn.Module):
    """Token ids ``[B, L]`` → tokens ``[B, L, D]`` and the valid mask ``[B, L]`` (False where the id is 0, padding).

    ``Embedding(vocab_size, text_embed_dim)`` → ``Linear(text_embed_dim, D)`` → plus learned positions.
    """

    def __init__(self, vocab_size: int, text_embed_dim: int, embed_dim: int, max_len: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, text_embed_dim, padding_idx=0)
        self.proj = nn.Linear(text_embed_dim, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, embed_dim))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = tokens != 0
        # A row of padding only would leave attention nothing to attend to: its first position counts.
        valid[:, 0] |= ~valid.any(1)
        return self.proj(self.token(tokens)) + self.pos_embed[:, : tokens.shape[1]], valid


# ---------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------


@dataclass
class RoutingRecord:
    """One block's routing over its ``T`` routed tokens (image tokens, non-padding text tokens)."""

    layer: str  # "image.0", "text.1", "fusion.0", "class_text.0" (the class descriptions through the text layers)
    logits: torch.Tensor  # [T, E] router logits, before temperature and noise: for the z-loss
    probs: torch.Tensor  # [T, E] full router softmax: for the balance losses
    weights: torch.Tensor  # [T, E] the top-k weights the experts were mixed with (0 off the top-k)
    indices: torch.Tensor  # [T, k] the selected general experts, largest weight first
    counts: torch.Tensor  # [E] tokens each general expert processed; sums to T·k


class UnifiedModalEncoder(nn.Module):
    """Pre-norm Transformer block whose FFN is global expert + modality expert + routed general experts.

    .. math::
        x \\leftarrow x + \\mathrm{drop}(\\mathrm{MHA}(\\mathrm{LN}_1 x)), \\qquad
        x \\leftarrow x + \\mathrm{drop}\\big(\\mathrm{mean}(g(h), m(h), \\textstyle\\sum_{e \\in
        \\mathrm{top}_k(h)} w_e\\,\\mathrm{expert}_e(h))\\big),\\ h = \\mathrm{LN}_2 x

    with ``g`` the global expert, ``m`` the modality expert (``vision_expert`` if ``modality ==
    "image"``, ``text_expert`` if ``"text"``, absent if ``None``, as in fusion layers) and the
    general experts dispatched by :class:`~models.moe.MixtureOfExperts` with an attentive router.
    The FFN runs on valid tokens only (padding gets no update and is neither routed nor counted).

    With ``gradient_checkpointing`` (set from the config, or by
    :meth:`DiffMoENetwork.set_gradient_checkpointing`) the block is recomputed in the backward
    pass, ``torch.utils.checkpoint`` with ``use_reentrant=False`` (dropout and router noise
    replayed), but only in training mode with gradients enabled.

    Args:
        config: the network's config.
        modality: ``"image"``, ``"text"`` or ``None`` (no modality expert).
        name: the layer's name in its :class:`RoutingRecord`.
    """

    def __init__(self, config: DiffMoEConfig, modality: str | None, name: str):
        super().__init__()
        if modality not in ("image", "text", None):
            raise ValueError(f"The 'modality' parameter of UnifiedModalEncoder must be 'image', 'text' or None. "
                             f"Got {modality!r} instead.")  # fmt: skip
        d, eps, p = config.embed_dim, config.layer_norm_eps, config.dropout
        hidden = config.expert_hidden_dim or 4 * d
        self.name, self.modality = name, modality
        self.gradient_checkpointing = config.use_gradient_checkpointing
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = nn.MultiheadAttention(d, config.num_heads, dropout=_attention_dropout(config), batch_first=True)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.global_expert = Expert(d, d, hidden, p, config.activation)
        self.vision_expert = Expert(d, d, hidden, p, config.activation) if modality == "image" else None
        self.text_expert = Expert(d, d, hidden, p, config.activation) if modality == "text" else None
        self.general_experts = MixtureOfExperts(
            d, d, config.num_general_experts, hidden, config.router_temperature, config.top_k,
            config.router_noise_std, p, router="attentive", activation=config.activation,
        )  # fmt: skip
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, RoutingRecord]:
        """``x [B, T', D]``, ``valid [B, T']`` bool (None: all valid) → ``(x [B, T', D], record)``."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, valid, use_reentrant=False)
        return self._forward(x, valid)

    def _forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, RoutingRecord]:
        h = self.norm1(x)
        attended, _ = self.attn(h, h, h, key_padding_mask=None if valid is None else ~valid, need_weights=False)
        x = x + self.drop(attended)
        h = self.norm2(x)
        tokens = h.reshape(-1, h.shape[-1]) if valid is None else h[valid]  # [T, D]
        routed = self.general_experts(tokens)
        branches = [self.global_expert(tokens), routed.output]
        for modality_expert in (self.vision_expert, self.text_expert):
            if modality_expert is not None:
                branches.append(modality_expert(tokens))
        update = torch.stack(branches).mean(0)
        if valid is None:
            update = update.view_as(x)
        else:
            update = x.new_zeros(x.shape).index_put((valid,), update.to(x.dtype))
        record = RoutingRecord(layer=self.name, logits=routed.logits, probs=routed.probs, weights=routed.weights,
                               indices=routed.indices, counts=(routed.weights != 0).sum(0))  # fmt: skip
        return x + self.drop(update), record


# ---------------------------------------------------------------------------------------------
# Encoders and fusion
# ---------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """Images ``[B, C, H, W]`` → tokens ``[B, 1 + N, D]`` (CLS first, final LayerNorm) and one record per layer."""

    def __init__(self, config: DiffMoEConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_channels, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            UnifiedModalEncoder(config, "image", f"image.{i}") for i in range(config.img_encoder_layers)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[RoutingRecord]]:
        x, records = self.drop(self.patch_embed(images)), []
        for layer in self.layers:
            x, record = layer(x)
            records.append(record)
        return self.norm(x), records


class TextEncoder(nn.Module):
    """Token ids ``[B, L]`` → tokens ``[B, L, D]`` (final LayerNorm), valid mask ``[B, L]``, one record per layer."""

    def __init__(self, config: DiffMoEConfig):
        super().__init__()
        self.embed = TextEmbed(config.vocab_size, config.text_embed_dim, config.embed_dim, config.max_text_len)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            UnifiedModalEncoder(config, "text", f"text.{i}") for i in range(config.text_encoder_layers)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[RoutingRecord]]:
        x, valid = self.embed(tokens)
        x, records = self.drop(x), []
        for layer in self.layers:
            x, record = layer(x, valid)
            records.append(record)
        return self.norm(x), valid, records


class _FusionLayer(nn.Module):
    """Image tokens cross-attend to text tokens and text to image (both pre-norm, residual), then a joint block."""

    def __init__(self, config: DiffMoEConfig, name: str):
        super().__init__()
        d, eps, attention_p = config.embed_dim, config.layer_norm_eps, _attention_dropout(config)
        self.norm_image = nn.LayerNorm(d, eps=eps)
        self.norm_text = nn.LayerNorm(d, eps=eps)
        self.image_to_text = nn.MultiheadAttention(d, config.num_heads, dropout=attention_p, batch_first=True)
        self.text_to_image = nn.MultiheadAttention(d, config.num_heads, dropout=attention_p, batch_first=True)
        self.drop = nn.Dropout(config.dropout)
        self.block = UnifiedModalEncoder(config, None, name)

    def forward(self, image, text, text_valid):
        hi, ht = self.norm_image(image), self.norm_text(text)
        from_text, _ = self.image_to_text(hi, ht, ht, key_padding_mask=~text_valid, need_weights=False)
        from_image, _ = self.text_to_image(ht, hi, hi, need_weights=False)
        image, text = image + self.drop(from_text), text + self.drop(from_image)
        n_image = image.shape[1]
        valid = torch.cat([text_valid.new_ones(len(image), n_image), text_valid], 1)
        joint, record = self.block(torch.cat([image, text], 1), valid)
        return joint[:, :n_image], joint[:, n_image:], record


class CrossModalFusion(nn.Module):
    """Fuses image tokens ``[B, 1 + N, D]`` and text tokens ``[B, L, D]`` over ``fusion_layers`` layers.

    Each layer: image tokens cross-attend to the (non-padding) text tokens and text tokens to the
    image tokens; then one :class:`UnifiedModalEncoder` without modality experts (global + general
    experts) runs self-attention over the joint sequence ``[image; text]``. A learned modality-type
    embedding is added to each stream first, a LayerNorm applied to both at the end.
    Returns ``(image [B, 1 + N, D], text [B, L, D], records)``.
    """

    def __init__(self, config: DiffMoEConfig):
        super().__init__()
        self.type_embed = nn.Parameter(torch.zeros(2, config.embed_dim))  # 0: image, 1: text
        self.layers = nn.ModuleList(_FusionLayer(config, f"fusion.{i}") for i in range(config.fusion_layers))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor):
        image, text, records = image + self.type_embed[0], text + self.type_embed[1], []
        for layer in self.layers:
            image, text, record = layer(image, text, text_valid)
            records.append(record)
        return self.norm(image), self.norm(text), records


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def alignment_loss(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The seed's cross-modal alignment: ``-mean_b cos(image_b, text_b)`` of pooled features ``[B, D]``; in [-1, 1]."""
    return -F.cosine_similarity(image_features, text_features, dim=-1).mean()


def _mean_pool(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, L, D]`` over the valid positions ``[B, L]``."""
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


def routing_report(records: list[RoutingRecord]) -> dict[str, float]:
    """Scalars for logs and plots: per layer, each general expert's share of assignments and the routing entropy."""
    report = {}
    for record in records:
        share = record.counts.float() / record.counts.sum().clamp(min=1)
        for e, value in enumerate(share.tolist()):
            report[f"routing/{record.layer}/expert_{e}"] = value
        report[f"routing/{record.layer}/entropy"] = float(routing_entropy(record.weights.detach().float()))
    return report


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffMoEOutput:
    """What :meth:`DiffMoENetwork.forward` returns."""

    logits: torch.Tensor  # [B, num_classes]: head(CLS features) (+ class-prototype term); never reads `tokens`
    image_embedding: torch.Tensor  # [B, D] L2-normalised projection of the CLS features (shared space)
    image_features: torch.Tensor  # [B, D] CLS features after the image encoder, the head's input
    text_embedding: torch.Tensor | None  # [B, D] L2-normalised projection of the mean text features; None: no tokens
    fused_image: torch.Tensor | None  # [B, D] mean of the fused image tokens; None without tokens
    fused_text: torch.Tensor | None  # [B, D] mean of the fused non-padding text tokens; None without tokens
    routing: list[RoutingRecord]  # one per block run: image.*, class_text.*, text.*, fusion.* (in that order)
    aux: dict[str, torch.Tensor]  # scalar losses; "aux_loss" is their weighted sum (the seed's "router_loss")


class DiffMoENetwork(nn.Module):
    """The Diff-MoE model: image encoder, text encoder, cross-modal fusion, classification head, shared space.

    ``aux`` holds, each as a scalar tensor: ``z_loss`` (summed over every routing record: ST-MoE's
    :func:`~models.moe.router_z_loss`, or the seed's :func:`~models.moe.squared_usage_loss` with
    ``z_loss="seed"``), ``balance_loss`` (:func:`~models.moe.kl_balance_loss` of the general
    experts' utilisation, summed over records), and with ``tokens`` ``alignment_loss``
    (:func:`alignment_loss` of ``fused_image`` and ``fused_text``) and ``contrastive_loss``
    (:func:`~models.contrastive.info_nce_loss` of the image and text embeddings); ``aux_loss`` is
    ``Σ weight · loss`` with the config's weights. Add the task loss yourself.

    Args:
        config: the hyper-parameters (:class:`DiffMoEConfig`).
    """

    def __init__(self, config: DiffMoEConfig):
        super().__init__()
        config.validate()
        d = config.embed_dim
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.fusion = CrossModalFusion(config) if config.fusion_layers else None
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d, config.num_classes))
        self.image_proj = nn.Linear(d, d, bias=False)
        self.text_proj = nn.Linear(d, d, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.apply(self._init_weights)
        std = config.initializer_range
        for parameter in (self.image_encoder.patch_embed.cls_token, self.image_encoder.patch_embed.pos_embed,
                          self.text_encoder.embed.pos_embed):  # fmt: skip
            nn.init.normal_(parameter, std=std)
        if self.fusion is not None:
            nn.init.normal_(self.fusion.type_embed, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit LayerNorms; router keys stay orthonormal."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.normal_(module.in_proj_weight, std=std)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Turn recomputation of every block in the backward pass on or off (training mode only)."""
        for module in self.modules():
            if isinstance(module, UnifiedModalEncoder):
                module.gradient_checkpointing = bool(enabled)

    @property
    def scale(self) -> torch.Tensor:
        """The learned logit scale ``exp(logit_scale)``, capped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=100)

    # -- the single-modality paths ---------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[RoutingRecord]]:
        """Images ``[B, C, H, W]`` → ``(embedding [B, D] L2-normalised, CLS features [B, D], records)``."""
        embedding, features, _, records = self._encode_image(images)
        return embedding, features, records

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` → L2-normalised text embeddings ``[B, D]`` (e.g. class prototypes, captions)."""
        return self._encode_text(tokens, "tokens")[0]

    @torch.no_grad()
    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """Where the CLS token looks in the last image layer: its attention over the patches, averaged over heads.

        Returns ``[B, img_size / patch_size, img_size / patch_size]``, in patch order; a map sums to
        at most 1 (the rest is CLS attending to itself). Call in eval mode (no attention dropout).
        """
        last, seen = self.image_encoder.layers[-1], {}
        handle = last.norm1.register_forward_hook(lambda module, args, output: seen.update(h=output))
        try:
            self.encode_image(images)
        finally:
            handle.remove()
        h = seen["h"]  # the last layer's normalised input [B, 1 + N, D]
        _, weights = last.attn(h[:, :1], h, h, need_weights=True)  # [B, 1, 1 + N], the heads' mean
        grid = self.config.img_size // self.config.patch_size
        return weights[:, 0, 1:].reshape(-1, grid, grid)

    def classify(self, image_features: torch.Tensor, image_embedding: torch.Tensor,
                 class_embeddings: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Logits ``[B, num_classes]``: ``head(image_features)``, plus ``scale · image_embedding @ class_embeddings.T``
        when the embeddings ``[num_classes, D]`` of every class's description are given."""
        logits = self.head(image_features)
        if class_embeddings is None:
            return logits
        expected = (self.config.num_classes, self.config.embed_dim)
        if tuple(class_embeddings.shape) != expected:
            raise ValueError(f"The 'class_embeddings' argument of DiffMoENetwork must have shape {expected} "
                             f"(one embedding per class). Got {tuple(class_embeddings.shape)}.")  # fmt: skip
        return logits + self.scale * image_embedding @ class_embeddings.t().to(image_embedding.dtype)

    def _encode_image(self, images):
        self._check_images(images)
        tokens, records = self.image_encoder(images)
        features = tokens[:, 0]
        return F.normalize(self.image_proj(features), dim=-1), features, tokens, records

    def _encode_text(self, tokens, argument: str, layer_prefix: str = "text"):
        self._check_tokens(tokens, argument)
        # Trailing columns of padding only change nothing (masked; positions count from 0): drop them.
        used = (tokens != 0).any(0).nonzero()
        tokens = tokens[:, : int(used.max()) + 1 if len(used) else 1]
        features, valid, records = self.text_encoder(tokens)
        if layer_prefix != "text":
            records = [dataclasses.replace(r, layer=r.layer.replace("text", layer_prefix, 1)) for r in records]
        embedding = F.normalize(self.text_proj(_mean_pool(features, valid)), dim=-1)
        return embedding, features, valid, records

    # -- everything --------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None,
                class_tokens: torch.Tensor | None = None, class_embeddings: torch.Tensor | None = None,
                pair_ids: torch.Tensor | None = None,
                paired_class: torch.Tensor | None = None) -> DiffMoEOutput:  # fmt: skip
        """Logits, embeddings, routing and auxiliary losses of a batch.

        Args:
            images: ``[B, C, img_size, img_size]`` float.
            tokens: ``[B, L]`` token ids of a text paired with each image (e.g. a caption); feeds
                the text embedding, fusion and the alignment and contrastive losses, never the
                logits. Defaults to None (image only).
            class_tokens: ``[num_classes, L]`` token ids of every class's description, encoded
                here (with gradients) into the prototype term of the logits. Defaults to None.
            class_embeddings: ``[num_classes, D]`` the same, already encoded (e.g. once per
                prediction by :meth:`encode_text`); not with ``class_tokens``. Defaults to None.
            pair_ids: ``[B]`` ids making rows with equal ids positives of each other in the
                contrastive loss (see :func:`~models.contrastive.info_nce_loss`). Defaults to
                None (row i ↔ text i), or to ``paired_class``.
            paired_class: ``[B]`` class of each row: pairs image b with ``class_tokens[paired_class[b]]``
                as ``tokens`` would, from the one encoding of ``class_tokens`` (training time: the
                row's label). Needs ``class_tokens``; not with ``tokens``. Defaults to None.
        """
        if class_tokens is not None and class_embeddings is not None:
            raise ValueError("DiffMoENetwork.forward takes class_tokens or class_embeddings, not both: pass "
                             "class_embeddings=net.encode_text(class_tokens) to reuse encoded texts.")  # fmt: skip
        if paired_class is not None and (tokens is not None or class_tokens is None):
            raise ValueError("DiffMoENetwork.forward takes paired_class with class_tokens and without tokens: it "
                             "pairs each row with its class's text in class_tokens.")  # fmt: skip
        cfg = self.config
        # 1) the image alone → logits (computed before any text is read)
        image_embedding, image_features, image_tokens, routing = self._encode_image(images)
        if class_tokens is not None:
            if len(class_tokens) != cfg.num_classes:
                raise ValueError(f"The 'class_tokens' argument of DiffMoENetwork.forward must have one row per class "
                                 f"({cfg.num_classes}). Got {len(class_tokens)} rows.")  # fmt: skip
            *class_text, class_routing = self._encode_text(class_tokens, "class_tokens", "class_text")
            class_embeddings, routing = class_text[0], routing + class_routing
        logits = self.classify(image_features, image_embedding, class_embeddings)
        aux: dict[str, torch.Tensor] = {}
        # 2) a paired text → its embedding, fusion, alignment and contrastive losses
        text = None  # embedding [B, D], tokens [B, L, D] and valid mask [B, L] of each row's text
        if tokens is not None:
            if len(tokens) != len(images):
                raise ValueError(f"The 'tokens' argument of DiffMoENetwork.forward must have one row per image "
                                 f"({len(images)}). Got {len(tokens)} rows.")  # fmt: skip
            *text, text_routing = self._encode_text(tokens, "tokens")
            routing = routing + text_routing
        elif paired_class is not None:
            self._check_classes(paired_class, len(images))
            text = [part[paired_class] for part in class_text]
            pair_ids = paired_class if pair_ids is None else pair_ids
        text_embedding = fused_image = fused_text = None
        if text is not None:
            if pair_ids is not None and tuple(pair_ids.shape) != (len(images),):
                raise ValueError(f"The 'pair_ids' argument of DiffMoENetwork.forward must have shape "
                                 f"({len(images)},). Got {tuple(pair_ids.shape)}.")  # fmt: skip
            text_embedding, text_tokens, text_valid = text
            fused_image_tokens, fused_text_tokens = image_tokens, text_tokens  # fusion_layers=0: no fusion
            if self.fusion is not None:
                fused_image_tokens, fused_text_tokens, records = self.fusion(image_tokens, text_tokens, text_valid)
                routing = routing + records
            fused_image, fused_text = fused_image_tokens.mean(1), _mean_pool(fused_text_tokens, text_valid)
            aux["alignment_loss"] = alignment_loss(fused_image, fused_text)
            aux["contrastive_loss"] = info_nce_loss(image_embedding, text_embedding, self.scale, pair_ids)
        # 3) routing losses, accumulated over every block that ran
        if cfg.z_loss == "st_moe":
            aux["z_loss"] = sum(router_z_loss(r.logits) for r in routing)
        else:  # "seed": what the seed's compute_z_loss computes, a usage balance on the mean probabilities
            aux["z_loss"] = sum(squared_usage_loss(r.probs) for r in routing)
        aux["balance_loss"] = sum(kl_balance_loss(r.probs, r.weights) for r in routing)
        weights = {"z_loss": cfg.router_z_loss_weight, "balance_loss": cfg.router_balance_loss_weight,
                   "alignment_loss": cfg.cross_modal_alignment_weight,
                   "contrastive_loss": cfg.contrastive_loss_weight}  # fmt: skip
        aux["aux_loss"] = sum(weights[name] * value for name, value in aux.items())
        return DiffMoEOutput(logits=logits, image_embedding=image_embedding, image_features=image_features,
                             text_embedding=text_embedding, fused_image=fused_image, fused_text=fused_text,
                             routing=routing, aux=aux)  # fmt: skip

    # -- input checks ------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.img_size, cfg.img_size)
        if not torch.is_tensor(images) or not images.is_floating_point():
            raise TypeError(f"The 'images' argument of DiffMoENetwork must be a float tensor. "
                            f"Got {getattr(images, 'dtype', type(images).__name__)}.")  # fmt: skip
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"The 'images' argument of DiffMoENetwork must have shape [B, {shape}] "
                             f"(in_channels, img_size, img_size). Got {tuple(images.shape)}.")  # fmt: skip

    def _check_classes(self, classes: torch.Tensor, rows: int) -> None:
        n = self.config.num_classes
        if not torch.is_tensor(classes) or classes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"The 'paired_class' argument of DiffMoENetwork.forward must be an int64 tensor of class "
                            f"ids. Got {getattr(classes, 'dtype', type(classes).__name__)}.")  # fmt: skip
        if tuple(classes.shape) != (rows,):
            raise ValueError(f"The 'paired_class' argument of DiffMoENetwork.forward must have shape ({rows},) "
                             f"(one class per image). Got {tuple(classes.shape)}.")  # fmt: skip
        if rows and not 0 <= int(classes.min()) <= int(classes.max()) < n:
            low, high = int(classes.min()), int(classes.max())
            raise ValueError(f"The 'paired_class' argument of DiffMoENetwork.forward holds ids outside [0, "
                             f"num_classes) = [0, {n}): min {low}, max {high}.")  # fmt: skip

    def _check_tokens(self, tokens: torch.Tensor, argument: str) -> None:
        cfg = self.config
        if not torch.is_tensor(tokens) or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"The {argument!r} argument of DiffMoENetwork must be an int64 tensor of token ids. "
                            f"Got {getattr(tokens, 'dtype', type(tokens).__name__)}.")  # fmt: skip
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= cfg.max_text_len:
            raise ValueError(f"The {argument!r} argument of DiffMoENetwork must have shape [B, L] with "
                             f"1 <= L <= max_text_len ({cfg.max_text_len}); tokenise with "
                             f"context_length={cfg.max_text_len}. Got {tuple(tokens.shape)}.")  # fmt: skip
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise ValueError(f"The {argument!r} argument of DiffMoENetwork holds ids outside [0, vocab_size) = "
                             f"[0, {cfg.vocab_size}): min {int(tokens.min())}, max {int(tokens.max())}.")  # fmt: skip

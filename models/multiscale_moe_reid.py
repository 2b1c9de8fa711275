"""Multi-scale MoE re-identification (seed 003): one expert per window scale, a gate over the scales.

The network (:class:`MultiScaleMoEReID`):

1. **window features** at each scale of ``model.scales`` (window sides in input pixels, default
   4, 8, 16), from an image pyramid: the image average-pooled so that one cell of a ResNet trunk
   (:class:`models.backbones.ResNetTrunk`, stride ``s``) covers one ``w x w``-pixel window. Every
   scale but the coarsest keeps only what it adds to the next coarser one (the pooled image minus
   the coarser one upsampled: a Laplacian-pyramid band), so the 4x4 windows carry fine texture
   and small accessories, the 8x8 ones body-part structure and the coarsest the silhouette and
   global colour. Each scale has its own trunk (pyramid levels differ in statistics, and a shared
   trunk would let any scale's path carry any scale's information, so the gate's weights would
   say nothing about where the identity lives); the coarser ones run on 4x and 16x fewer pixels.
   A 1x1 convolution per scale, then GeM pooling over the windows, gives one vector per scale;
3. **experts**: one seed ``ExpertNetwork`` per scale (:class:`models.moe.ExpertBank`: Linear,
   LayerNorm, GELU, Dropout twice, plus a residual projection), run together as batched matmuls;
4. **gate**: the seed's ``GatingNetwork`` (:class:`models.moe.MLPGate`, depth ``gate_depth``,
   ``temperature``) over the concatenated scale vectors, softmax weights per image;
5. **fusion**: the weighted sum of the experts' outputs (``fusion=moe``), or the seed's point of
   comparison, one MLP on the concatenated scale vectors (``fusion=mlp``, no gate);
6. BNNeck, label-smoothed identity loss and batch-hard triplet (:class:`models.reid_head.ReIDHead`),
   plus ``balance_weight`` x the seed's expert balance loss (variance of the mean gate weights,
   :func:`models.moe.usage_variance_loss`).

Cross-modal (RGB / near infrared / thermal infrared, e.g. RGBNT201): every modality goes through
the same trunk and multi-scale MoE, then one **modality expert** per modality
(:class:`~models.moe.ExpertBank`) and a **cross-modal gate** over the modalities' features (the
seed's ``CrossModalMoE``). A modality a row lacks is masked out of the gate (weight exactly 0;
its features are zeroed in the gate's input), never fused as zeros.

Routing outputs (validation rows of each fold, after training), per gate (``scales_<modality>``,
and ``modalities`` for the cross-modal gate): ``scale_weights/<modality>/<s>px`` and
``modality_weights/fused/<m>`` (mean gate weights; heatmaps over the folds), ``usage/<gate>``
(variance of the mean weights: 0 balanced), ``activation/<gate>`` (share of weights above
``activation_threshold``, by default the uniform share 1/E), ``stability/<gate>`` (variance of
an identity's weights across its images and cameras, averaged over identities and experts: 0
means a person is routed the same way by every camera) and ``expert_weights.png`` in the fold's
directory (the weights of validation images, sorted by identity: the seed's heatmap). Every
epoch logs ``loss/<part>`` and ``routing/scale_<s>px`` / ``routing/modality_<m>`` (mean training
weights).

Defaults are sized for the embedded 64x32 images on a CPU (3x3 stride-2 stem, width 16, two
stages: a stride-4 map, so a 4-px window is one cell). For Market-1501 at 256x128 on a GPU, the usual re-ID backbone::

    model: {depth: 50, width: 64, stem: imagenet, n_stages: 4, last_stride: 1,
            pretrained: imagenet, scales: [16, 32, 64], embed_dim: 512}
    train: {epochs: 120, batch_size: 64, lr: 3.5e-4}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from harness.config import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, check_fields
from harness.errors import HarnessError
from harness.io import atomic_write
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.tasks.reid import ReIDFamily
from models.backbones import ResNetTrunk, load_pretrained
from models.moe import ExpertBank, MLPGate, usage_variance_loss
from models.reid_head import ReIDHead

__all__ = ["MultiScaleMoEConfig", "MultiScaleMoEReID", "MultiScaleMoEFamily", "multiscale_moe_reid", "search_space",
           "routing_summary", "GeM"]  # fmt: skip

FUSIONS = ("moe", "mlp")


@dataclass
class MultiScaleMoEConfig:
    depth: int = 18  # trunk: 18, 34 or 50 (torchvision's block layouts)
    width: int = 16  # trunk channels of the first stage (64: the standard ResNet, needed for pretrained)
    stem: str = "small_s2"  # small (3x3 stride 1), small_s2 (stride 2) or imagenet (7x7 stride 2 + max-pool)
    n_stages: int = 2  # trunk stages used (1-4); the feature map the windows pool (here stride 4)
    last_stride: int = 2  # stride of stage 4 (1: the BoT trick)
    pretrained: str | None = None  # None (random init), "imagenet" (torchvision's weights) or a state-dict file
    scales: list = field(default_factory=lambda: [4, 8, 16])  # window sides in input pixels, one expert each
    embed_dim: int = 256  # expert output = embedding size
    expert_hidden_dim: int | None = None  # None: twice the scale vector's size (the seed's 512 -> 1024)
    gate_depth: int = 2  # MLP gate layers, 1-3 (2: the seed's GatingNetwork)
    temperature: float = 1.0  # gate softmax temperature (below 1: sharper)
    fusion: str = "moe"  # moe (gated experts) or mlp (one MLP on the concatenated scales: the seed's baseline)
    dropout: float = 0.1  # in the experts and the gate (the seed's)
    balance_weight: float = 0.01  # x variance of the mean gate weights (the seed's expert balance loss)
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    instances_per_id: int = 4  # K of the P x K batches (P = train.batch_size / K)
    activation_threshold: float | None = None  # a gate weight above this counts as active (reports); None: 1/E
    augmentation: str = "crop_flip_erase"


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial positions, ``(mean x^p)^(1/p)``, p learned (start 3)."""

    def __init__(self, p: float = 3.0):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean((-2, -1)).pow(1.0 / self.p)


class MultiScaleMoEReID(nn.Module):
    """Images ``[B, M, 3, H, W]`` (M modalities) → embedding ``[B, embed_dim]``; see the module docstring."""

    def __init__(self, config: MultiScaleMoEConfig, n_ids: int, modalities: tuple[str, ...], image_hw: tuple[int, int]):
        super().__init__()
        self.config, self.modalities = config, modalities
        trunk = lambda: ResNetTrunk(config.depth, config.width, 3, config.stem, config.last_stride, config.n_stages)  # noqa: E731
        self.trunks = nn.ModuleList(trunk() for _ in config.scales)
        if config.pretrained:
            for t in self.trunks:
                load_pretrained(t, config.pretrained, config.depth)
        self.stride = self.trunks[0].stride
        self.scales = _check_scales(config.scales, self.stride, image_hw)
        channels, n_scales, dim = self.trunks[0].out_channels, len(self.scales), config.embed_dim
        self.window_encoders = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for _ in self.scales
        )  # fmt: skip
        self.pool = GeM()
        if config.fusion == "moe":
            self.experts = ExpertBank(n_scales, channels, dim, config.expert_hidden_dim, config.dropout)
            self.gate = MLPGate(n_scales * channels, n_scales, config.temperature, depth=config.gate_depth,
                                dropout=config.dropout)  # fmt: skip
        else:  # one seed ExpertNetwork over the concatenation: the plain MLP fusion
            self.mlp = ExpertBank(1, n_scales * channels, dim, config.expert_hidden_dim, config.dropout)
        if len(modalities) > 1:
            self.modality_experts = ExpertBank(len(modalities), dim, dim, dropout=config.dropout)
            self.modality_gate = MLPGate(len(modalities) * dim, len(modalities), config.temperature,
                                         depth=config.gate_depth, dropout=config.dropout)  # fmt: skip
        self.head = ReIDHead(dim, n_ids, config.label_smoothing, config.triplet_margin, config.triplet_weight)
        self._sums: dict[str, float] = {}
        self._rows = 0

    def scale_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → ``[S, B, C]``: every scale's pyramid band through its trunk, pooled over the windows."""
        levels = [F.avg_pool2d(images, s // self.stride, ceil_mode=True) if s > self.stride else images for s in self.scales]
        bands = [level - F.interpolate(coarser, size=level.shape[-2:], mode="bilinear", align_corners=False)
                 for level, coarser in zip(levels, levels[1:])] + [levels[-1]]  # fmt: skip
        return torch.stack([self.pool(encode(trunk(band)))
                            for trunk, encode, band in zip(self.trunks, self.window_encoders, bands)])  # fmt: skip

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"features": [B, D] (pre-neck), "scale_weights": [B, M, S], "modality_weights": [B, M]}``."""
        b, m = images.shape[:2]
        vectors = self.scale_vectors(images.flatten(0, 1))  # [S, B·M, C]
        out: dict[str, torch.Tensor] = {}
        if self.config.fusion == "moe":
            weights = self.gate(vectors.permute(1, 0, 2).flatten(1)).weights  # [B·M, S]
            fused = (self.experts(vectors) * weights.t()[..., None]).sum(0)  # [B·M, D]
            out["scale_weights"] = weights.view(b, m, -1)
        else:
            fused = self.mlp(vectors.permute(1, 0, 2).flatten(1)[None])[0]
        fused = fused.view(b, m, -1)
        if m == 1:
            out["features"] = fused[:, 0]
            return out
        experts = self.modality_experts(fused.transpose(0, 1))  # [M, B, D]
        gate = self.modality_gate((fused * mask[..., None]).flatten(1), mask=mask)
        out["features"] = (experts * gate.weights.t()[..., None]).sum(0)
        out["modality_weights"] = gate.weights
        return out

    def embed(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head.embed(self(images, mask)["features"])

    def training_step(self, batch) -> torch.Tensor:
        images, mask, labels = batch
        out = self(images, mask)
        losses = self.head.losses(out["features"], labels)
        if "scale_weights" in out:
            losses["balance"] = self.config.balance_weight * usage_variance_loss(out["scale_weights"])
        if "modality_weights" in out:
            losses["balance"] = losses.get("balance", 0.0) + self.config.balance_weight * usage_variance_loss(
                out["modality_weights"][mask.all(1)] if mask.all(1).any() else out["modality_weights"])
        self._accumulate(losses, out, len(labels))
        return sum(losses.values())

    def _accumulate(self, losses: dict[str, torch.Tensor], out: dict[str, torch.Tensor], rows: int) -> None:
        logs = {f"loss/{name}": float(value.detach()) for name, value in losses.items()}
        if "scale_weights" in out:
            mean = out["scale_weights"].detach().mean((0, 1))
            logs.update({f"routing/scale_{s}px": float(w) for s, w in zip(self.scales, mean)})
        if "modality_weights" in out:
            mean = out["modality_weights"].detach().mean(0)
            logs.update({f"routing/modality_{name}": float(w) for name, w in zip(self.modalities, mean)})
        for key, value in logs.items():
            self._sums[key] = self._sums.get(key, 0.0) + value * rows
        self._rows += rows

    def epoch_logs(self) -> dict[str, float]:
        logs = {key: total / max(1, self._rows) for key, total in self._sums.items()}
        self._sums, self._rows = {}, 0
        return logs


def _check_scales(scales, stride: int, image_hw: tuple[int, int]) -> list[int]:
    if not isinstance(scales, (list, tuple)) or not scales or len(set(scales)) != len(scales):
        raise HarnessError(f"model.scales must be a list of distinct window sides in pixels, got {scales!r}.")
    scales = sorted(int(s) for s in scales)
    bad = [s for s in scales if s < stride or s % stride]
    if bad:
        raise HarnessError(f"model.scales {bad} are not multiples of the backbone's stride {stride} "
                           "(set model.n_stages / model.stem for a finer feature map).")  # fmt: skip
    if scales[-1] > max(image_hw):
        raise HarnessError(f"model.scales: a {scales[-1]}-px window is larger than the {image_hw[0]}x{image_hw[1]} images.")
    return scales


def routing_summary(weights: np.ndarray, pids: np.ndarray, names: list[str], threshold: float | None) -> dict[str, float]:
    """Usage variance, activation rate and gate stability of one gate's weights ``[N, E]`` (see the module docstring).

    ``threshold`` None: an expert is active where its weight exceeds the uniform share ``1/E``.
    """
    threshold = 1.0 / weights.shape[1] if threshold is None else threshold
    usage = float(np.var(weights.mean(0), ddof=1)) if weights.shape[1] > 1 else 0.0
    frame = pd.DataFrame(weights, columns=names).assign(pid=pids)
    spread = frame.groupby("pid").filter(lambda g: len(g) > 1).groupby("pid")[names].var(ddof=0)
    return {"usage": usage, "activation": float((weights > threshold).mean()),
            "stability": float(spread.to_numpy().mean()) if len(spread) else float("nan")}  # fmt: skip


class MultiScaleMoEFamily(ReIDFamily):
    def __init__(self, config: MultiScaleMoEConfig):
        self.config = config
        self.augmentation, self.instances_per_id = config.augmentation, config.instances_per_id
        self._explained: dict[str, float] = {}

    def build_network(self, dataset, ctx: FitContext, n_ids: int) -> nn.Module:
        height, width, _ = dataset.meta["image_shape"]
        return MultiScaleMoEReID(self.config, n_ids, tuple(dataset.meta["modalities"]), (height, width))

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        super().fit(train, valid, ctx)
        self._explained = self._routing_report(valid, ctx)

    def explain(self) -> dict[str, float]:
        return dict(self._explained)

    @torch.no_grad()
    def _routing_report(self, valid: pd.DataFrame, ctx: FitContext) -> dict[str, float]:
        if self.config.fusion != "moe" and len(self.modalities) == 1:
            return {}
        self.network.eval()
        pixels, mask = self._pixels(valid)
        outs = [self.network(self._inputs(pixels[i : i + 256], mask[i : i + 256]).to(self.device), mask[i : i + 256].to(self.device))
                for i in range(0, len(pixels), 256)]  # fmt: skip
        pids, report = valid["pid"].to_numpy(), {}
        threshold = self.config.activation_threshold
        if self.config.fusion == "moe":
            scale_weights = torch.cat([o["scale_weights"] for o in outs]).cpu().numpy()  # [N, M, S]
            names = [f"{s}px" for s in self.network.scales]
            present = mask.numpy()
            for m, modality in enumerate(self.modalities):
                rows = present[:, m]
                weights = scale_weights[rows, m]
                report.update({f"scale_weights/{modality}/{n}": float(w) for n, w in zip(names, weights.mean(0))})
                summary = routing_summary(weights, pids[rows], names, threshold)
                report.update({f"{key}/scales_{modality}": value for key, value in summary.items()})
            _plot_weights(ctx.workdir / "expert_weights.png", scale_weights, present, pids, names, self.modalities)
        if len(self.modalities) > 1:
            weights = torch.cat([o["modality_weights"] for o in outs]).cpu().numpy()
            report.update({f"modality_weights/fused/{m}": float(w) for m, w in zip(self.modalities, weights.mean(0))})
            summary = routing_summary(weights, pids, list(self.modalities), threshold)
            report.update({f"{key}/modalities": value for key, value in summary.items()})
        return report


def _plot_weights(path, weights: np.ndarray, present: np.ndarray, pids: np.ndarray, names: list[str],
                  modalities: tuple[str, ...], n_images: int = 64) -> None:  # fmt: skip
    """The seed's heatmap: gate weight of every scale (rows) for validation images sorted by identity."""
    order = np.argsort(pids, kind="stable")[:n_images]
    fig = Figure(figsize=(0.12 * len(order) + 2.0, 1.0 + 0.9 * len(modalities) * len(names) / 3))
    axes = fig.subplots(len(modalities), 1, squeeze=False)[:, 0]
    for ax, m, modality in zip(axes, range(len(modalities)), modalities):
        values = np.where(present[order, m][:, None], weights[order, m], np.nan).T
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(names)), names)
        ax.set_xticks(range(len(order)), [str(p) for p in pids[order]], rotation=90, fontsize=5)
        ax.set_title(f"{modality}: gate weight per scale, validation images by identity", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def search_space(trial) -> dict[str, Any]:
    """The seed's ablations (experts, gate depth, temperature, fusion) and the loop's two main knobs."""
    scales = {"2": [4, 16], "3": [4, 8, 16], "4": [4, 8, 16, 32]}
    return {
        "model": {
            "scales": scales[trial.suggest_categorical("model.n_experts", list(scales))],
            "gate_depth": trial.suggest_int("model.gate_depth", 1, 3),
            "temperature": trial.suggest_categorical("model.temperature", [0.5, 1.0, 2.0]),
            "fusion": trial.suggest_categorical("model.fusion", list(FUSIONS)),
        },
        "train": {"lr": trial.suggest_float("train.lr", 3e-4, 3e-3, log=True)},
    }


@register_model(
    "multiscale_moe_reid",
    task=TaskType.REID,
    config=MultiScaleMoEConfig,
    dataset="market1501",
    train_defaults={"epochs": 20, "batch_size": 32, "lr": 3e-3, "weight_decay": 5e-4, "patience": 8,
                    "warmup_ratio": 0.1},  # fmt: skip
    search_space=search_space,
)
def multiscale_moe_reid(config: MultiScaleMoEConfig) -> MultiScaleMoEFamily:
    """Multi-scale MoE re-ID: an expert per window scale (4/8/16 px), a gate, BNNeck; cross-modal gate."""
    if config.fusion not in FUSIONS:
        raise HarnessError(f"model.fusion must be one of {', '.join(FUSIONS)}, got {config.fusion!r}.")
    if config.gate_depth not in (1, 2, 3):
        raise HarnessError(f"model.gate_depth must be 1, 2 or 3, got {config.gate_depth!r}.")
    check_fields(config, POSITIVE_INT, "width", "embed_dim", "instances_per_id")
    check_fields(config, POSITIVE, "temperature")
    check_fields(config, NON_NEGATIVE, "balance_weight", "triplet_margin", "triplet_weight")
    check_fields(config, FRACTION, "dropout", "label_smoothing")
    if config.activation_threshold is not None:
        check_fields(config, FRACTION, "activation_threshold")
    return MultiScaleMoEFamily(config)

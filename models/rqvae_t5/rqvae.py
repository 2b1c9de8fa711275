"""RQ-VAE: a residual-quantised auto-encoder that turns item embeddings into semantic-ID tuples.

An MLP encoder maps each item embedding to ``e_dim`` dimensions; ``num_levels`` vector quantisers
then code it coarse to fine, each level quantising what the levels above left over (the
residual); an MLP decoder mirrors the encoder and reconstructs the embedding from the sum of the
chosen codewords. The tuple of chosen indices, one per level, is the item's semantic ID. The loss
is reconstruction MSE + ``quant_loss_weight`` × (codebook loss + β·commitment loss, averaged over
levels); the straight-through estimator carries the decoder's gradient past the quantiser.

A level whose Sinkhorn-Knopp epsilon is > 0 assigns codes by optimal transport over the batch
instead of nearest codeword: distances are rescaled to [-1, 1], Sinkhorn-Knopp balances the plan
so every code receives the same mass, and each item takes the argmax of its row. This spreads
the items over the codebook (the seed uses it on the last level only, epsilon 0.003) and lowers
the collision rate.

Follows MQL4GRec (``index/models/rqvae.py``, ``rq.py``, ``vq.py``, ``index/trainer.py``) except:

* codebooks are k-means initialised level by level on the whole catalogue's residuals before
  training (MQL4GRec: on its first shuffled batch of 2048 items), by a seeded k-means++ in torch
  rather than scikit-learn, so that the same seed gives the same codes;
* Sinkhorn-Knopp scales the kernel by a row and a column vector (two matrix-vector products
  per iteration) instead of renormalising the whole plan twice: the same plan, about 30 times
  faster on a 1024 × 256 batch; epsilons below ``MIN_SK_EPSILON`` would overflow float64 and are refused;
* codes for the catalogue come from the nearest codeword, as MQL4GRec's
  ``generate_indices_distance.py`` and its training-time collision check do; ``sk_at_inference``
  applies each level's Sinkhorn-Knopp to the whole catalogue instead (an item's code then depends
  on the other items, which is harmless when the catalogue is fixed);
* the checkpoint with the lowest collision rate is chosen every epoch (ties: lower
  reconstruction loss) and kept in memory, not every ``eval_step`` epochs on disk;
* the default encoder is narrower than the seed's ``[2048, 1024, 512, 256, 128, 64]``, so that
  an epoch over 3,000 items of 768 dimensions takes 1–2 s on two CPU cores; set ``hidden_dims``
  to the seed's list for its model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.config import FINITE_NON_NEGATIVE, FINITE_POSITIVE, FRACTION, POSITIVE_INT, check_fields
from harness.errors import HarnessError

__all__ = [
    "MIN_SK_EPSILON",
    "RQVAE",
    "RQVAEConfig",
    "VectorQuantizer",
    "check_rqvae_config",
    "sinkhorn_assign",
    "train_rqvae",
]

MIN_SK_EPSILON = 0.002  # the Sinkhorn-Knopp kernel spans e^{±1/ε}: e^{±500} stays well inside float64


@dataclass
class RQVAEConfig:
    # encoder widths, the decoder mirrors them; the seed: [2048, 1024, 512, 256, 128, 64]
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128, 64])
    e_dim: int = 32  # width of the quantised latent (the seed: 32)
    num_levels: int = 4  # codebooks, one code token per level (the seed: 4)
    codebook_size: int = 256  # codes per level (the seed: 256)
    # Sinkhorn-Knopp epsilon per level, 0 = nearest code (the seed's values)
    sk_epsilons: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.003])
    sk_iters: int = 50  # Sinkhorn-Knopp iterations (the seed: 50)
    sk_at_inference: bool = False  # also use Sinkhorn-Knopp when encoding the catalogue (MQL4GRec: nearest code)
    beta: float = 0.25  # commitment weight inside the quantisation loss
    quant_loss_weight: float = 1.0  # quantisation loss weight against reconstruction MSE
    dropout: float = 0.0  # before every encoder/decoder Linear
    kmeans_init: bool = True  # k-means initialised codebooks; False: uniform in ±1/codebook_size
    kmeans_iters: int = 100  # Lloyd iterations of that k-means (the seed: 100)
    epochs: int = 200  # the seed: 500 on GPU
    batch_size: int = 1024  # items per step (the seed: 2048)
    lr: float = 1e-3  # AdamW learning rate (the seed's)
    weight_decay: float = 1e-4  # AdamW weight decay (the seed's)
    seed: int = 42  # weights, k-means, shuffling and dropout


def check_rqvae_config(config: RQVAEConfig, where: str = "rqvae") -> None:
    """A one-line ``HarnessError`` naming ``<where>.<field>`` for the first setting out of range."""
    if not (isinstance(config.hidden_dims, (list, tuple)) and all(POSITIVE_INT[0](d) for d in config.hidden_dims)):
        raise HarnessError(f"{where}.hidden_dims must be a list of positive integers, got {config.hidden_dims!r}.")
    check_fields(config, POSITIVE_INT, "e_dim", "num_levels", "sk_iters", "kmeans_iters", "epochs", "batch_size",
                 where=where)  # fmt: skip
    check_fields(config, (lambda v: POSITIVE_INT[0](v) and v >= 2, "an integer >= 2"), "codebook_size", where=where)
    epsilons = config.sk_epsilons
    if not (isinstance(epsilons, (list, tuple)) and len(epsilons) == config.num_levels):
        raise HarnessError(
            f"{where}.sk_epsilons must list one epsilon per level ({where}.num_levels={config.num_levels}), "
            f"got {epsilons!r}."
        )
    if not all(isinstance(e, (int, float)) and (e == 0 or MIN_SK_EPSILON <= e < math.inf) for e in epsilons):
        raise HarnessError(
            f"{where}.sk_epsilons must be 0 (nearest code) or finite numbers >= {MIN_SK_EPSILON} (smaller ones "
            f"overflow Sinkhorn-Knopp), got {epsilons!r}."
        )
    check_fields(config, FINITE_NON_NEGATIVE, "beta", "quant_loss_weight", "weight_decay", where=where)
    check_fields(config, FINITE_POSITIVE, "lr", where=where)
    check_fields(config, FRACTION, "dropout", where=where)
    check_fields(config, (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"), "seed", where=where)


# ---------------------------------------------------------------------------------------------
# Quantiser
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sinkhorn_assign(distances: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Balanced code assignment: the argmax of each row of the Sinkhorn-Knopp transport plan.

    ``distances`` ``[B, K]`` are rescaled to [-1, 1] over the whole batch (as MQL4GRec does, so
    that ``epsilon`` means the same whatever the distances' scale); the kernel ``exp(-d / ε)``
    is then scaled alternately so that every item carries mass 1/B and every code 1/K (the
    plan is ``diag(row) · kernel · diag(col)``). Smaller ``epsilon`` → closer to an exactly
    balanced assignment, and more iterations to get there. The kernel spans ``e^{±1/ε}`` in
    float64, which bounds ``epsilon`` below (``MIN_SK_EPSILON``).
    """
    d = distances.double()
    middle = (d.max() + d.min()) / 2
    amplitude = d.max() - middle + 1e-5
    kernel = torch.exp(-((d - middle) / amplitude) / epsilon)
    n_items, n_codes = kernel.shape
    col = torch.ones(n_codes, dtype=kernel.dtype, device=kernel.device)
    for _ in range(iters):
        row = 1.0 / (n_items * (kernel @ col))
        col = 1.0 / (n_codes * (kernel.T @ row))
    return (kernel * col).argmax(dim=1)


@torch.no_grad()
def _kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` centres of ``points`` (CPU): seeded k-means++ seeding, then Lloyd iterations.

    An empty cluster keeps its centre; with fewer points than ``k`` some centres repeat.
    """
    n = points.shape[0]
    centres = points[torch.randint(n, (1,), generator=generator)]
    nearest = (points - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        new = points[torch.multinomial(weights, 1, generator=generator)]
        centres = torch.cat([centres, new])
        nearest = torch.minimum(nearest, (points - new).pow(2).sum(1))
    for _ in range(iters):
        assignment = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        if torch.equal(updated, centres):
            break
        centres = updated
    return centres


class VectorQuantizer(nn.Module):
    """One codebook: nearest-codeword or Sinkhorn-Knopp assignment, straight-through gradient."""

    def __init__(self, codebook_size: int, e_dim: int, beta: float = 0.25, sk_epsilon: float = 0.0, sk_iters: int = 50):
        super().__init__()
        self.beta = beta
        self.sk_epsilon = sk_epsilon
        self.sk_iters = sk_iters
        self.codebook = nn.Embedding(codebook_size, e_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances ``[B, K]`` from each latent to every codeword."""
        w = self.codebook.weight
        return z.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * z @ w.T

    def forward(self, z: torch.Tensor, use_sk: bool = True):
        """``(quantised with straight-through gradient, loss, codes [B], distances [B, K])``."""
        distances = self.distances(z)
        if use_sk and self.sk_epsilon > 0:
            codes = sinkhorn_assign(distances, self.sk_epsilon, self.sk_iters)
        else:
            codes = distances.argmin(dim=1)
        z_q = self.codebook(codes)
        codebook_loss = F.mse_loss(z_q, z.detach())  # moves the codewords
        commitment_loss = F.mse_loss(z, z_q.detach())  # keeps the encoder near its codewords
        loss = codebook_loss + self.beta * commitment_loss
        return z + (z_q - z).detach(), loss, codes, distances


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    """Dropout → Linear → ReLU blocks, no activation after the last Linear (MQL4GRec's ``MLPLayers``)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
        linear = nn.Linear(n_in, n_out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [nn.Dropout(dropout), linear]
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder → residual quantiser (``num_levels`` codebooks) → decoder.

    Args:
        in_dim: width of the item embeddings.
        config: sizes and loss weights; see ``RQVAEConfig``.
    """

    def __init__(self, in_dim: int, config: RQVAEConfig):
        super().__init__()
        self.config = config
        dims = [in_dim, *config.hidden_dims, config.e_dim]
        self.encoder = _mlp(dims, config.dropout)
        self.quantizers = nn.ModuleList(
            VectorQuantizer(config.codebook_size, config.e_dim, config.beta, epsilon, config.sk_iters)
            for epsilon in config.sk_epsilons
        )
        self.decoder = _mlp(dims[::-1], config.dropout)

    def quantize(self, z: torch.Tensor, use_sk: bool):
        """``(sum of codewords, mean quantisation loss, codes [B, L], per-level distances [B, K])``."""
        residual, z_q = z, torch.zeros_like(z)
        losses, codes, distances = [], [], []
        for quantizer in self.quantizers:
            level_q, loss, level_codes, level_distances = quantizer(residual, use_sk=use_sk)
            residual = residual - level_q
            z_q = z_q + level_q
            losses.append(loss)
            codes.append(level_codes)
            distances.append(level_distances)
        return z_q, torch.stack(losses).mean(), torch.stack(codes, dim=1), distances

    def forward(self, x: torch.Tensor, use_sk: bool = True):
        """``(reconstruction, quantisation loss, codes [B, L])`` — the training pass."""
        z_q, quant_loss, codes, _ = self.quantize(self.encoder(x), use_sk)
        return self.decoder(z_q), quant_loss, codes

    def loss(self, x: torch.Tensor, use_sk: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total loss, reconstruction MSE, quantisation loss)`` for a batch."""
        reconstruction, quant_loss, _ = self(x, use_sk)
        recon_loss = F.mse_loss(reconstruction, x)
        return recon_loss + self.config.quant_loss_weight * quant_loss, recon_loss, quant_loss

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor, use_sk: bool | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Semantic IDs of ``x`` and each level's distances to every code, for collision resolution.

        Encode the whole catalogue in one call: with Sinkhorn-Knopp the assignment is balanced
        over the rows given. Put the model in eval mode first (``train_rqvae`` returns it so).

        Args:
            x: ``[N, in_dim]`` embeddings; moved to the model's device and dtype.
            use_sk: Sinkhorn-Knopp on the levels whose epsilon is > 0. Defaults to
                ``config.sk_at_inference``.

        Returns:
            ``codes`` LongTensor ``[N, num_levels]`` and a list of ``num_levels`` tensors
            ``[N, codebook_size]``: squared distances from the item's residual at that level
            (given the codes chosen above it) to every codeword.
        """
        use_sk = self.config.sk_at_inference if use_sk is None else use_sk
        x = x.to(self.decoder[-1].weight)
        _, _, codes, distances = self.quantize(self.encoder(x), use_sk)
        return codes, distances

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """k-means each level's codebook on the residuals of ``x`` left by the levels above."""
        residual = self.encoder(x)
        for quantizer in self.quantizers:
            centres = _kmeans(residual.cpu(), quantizer.codebook.num_embeddings, self.config.kmeans_iters, generator)
            quantizer.codebook.weight.copy_(centres.to(residual))
            residual = residual - quantizer.codebook(quantizer.distances(residual).argmin(1))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.shape[0] == 0:
        shape = getattr(embeddings, "shape", type(embeddings).__name__)
        raise HarnessError(f"embeddings must be a non-empty 2-D array [items, dim], got {shape}.")
    if not np.issubdtype(embeddings.dtype, np.number) or np.issubdtype(embeddings.dtype, np.complexfloating):
        raise HarnessError(f"embeddings must be real numbers, got dtype {embeddings.dtype}.")
    if not np.isfinite(embeddings).all():
        row = int(np.flatnonzero(~np.isfinite(embeddings).all(axis=1))[0])
        raise HarnessError(f"embeddings must be finite; row {row} holds NaN or inf.")
    return embeddings.astype(np.float32, copy=False)


def _epoch_report(model: RQVAE, x: torch.Tensor) -> dict:
    """Reconstruction MSE, collision rate and per-level code use of the whole catalogue, eval mode."""
    model.eval()
    with torch.no_grad():
        z_q, _, codes, _ = model.quantize(model.encoder(x), model.config.sk_at_inference)
        recon_loss = F.mse_loss(model.decoder(z_q), x).item()
    codes = codes.cpu().numpy()
    unique_tuples = len(np.unique(codes, axis=0))
    return {
        "recon_loss": recon_loss,
        "collision_rate": 1.0 - unique_tuples / len(codes),
        "utilisation": [len(np.unique(level)) / model.config.codebook_size for level in codes.T],
    }


def train_rqvae(
    embeddings: np.ndarray,
    config: RQVAEConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[RQVAE, list[dict]]:
    """Fit an RQ-VAE to item embeddings; return the epoch with the fewest collisions, and the history.

    Every epoch is followed by a pass over the whole catalogue in eval mode that measures the
    reconstruction MSE, the collision rate (1 − unique code tuples / items) and each level's
    code utilisation (codes used / ``codebook_size``). The model returned holds the weights of
    the epoch with the lowest collision rate (ties: lower reconstruction MSE), in eval mode.
    The same seed gives the same model and codes on CPU; the global RNG state is left as it was.

    Args:
        embeddings: ``[N, dim]`` finite item embeddings, one row per item.
        config: model and optimisation settings, validated first.
        device: where to train. Defaults to ``"cpu"``.
        progress: show a tqdm bar over epochs. Defaults to True.
        log: called with one line per epoch (e.g. ``print`` or a logger's ``info``). Defaults to None.

    Returns:
        ``(model, history)``; ``history[i]`` describes epoch ``i + 1``: ``epoch``, ``train_loss``
        (mean total loss over the epoch's batches), ``recon_loss``, ``collision_rate`` and
        ``utilisation`` (a list, one fraction per level).
    """
    check_rqvae_config(config)
    device = torch.device(device)
    x = torch.from_numpy(_check_embeddings(embeddings)).to(device)
    history: list[dict] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = RQVAE(x.shape[1], config).to(device)
        if config.kmeans_init:
            model.eval()
            model.init_codebooks(x, generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_key, best_state = (math.inf, math.inf), None
        bar = tqdm(range(1, config.epochs + 1), desc="rqvae", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            total, seen = 0.0, 0
            for batch in torch.randperm(len(x), generator=generator).to(device).split(config.batch_size):
                loss, _, _ = model.loss(x[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                seen += len(batch)
            row = {"epoch": epoch, "train_loss": total / seen, **_epoch_report(model, x)}
            history.append(row)
            if (row["collision_rate"], row["recon_loss"]) < best_key:
                best_key = (row["collision_rate"], row["recon_loss"])
                best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
            bar.set_postfix(recon=f"{row['recon_loss']:.4g}", collision=f"{row['collision_rate']:.4f}")
            if log is not None:
                use = "/".join(f"{u:.2f}" for u in row["utilisation"])
                log(f"rqvae epoch {epoch}/{config.epochs}: loss {row['train_loss']:.4g}, "
                    f"recon {row['recon_loss']:.4g}, collision rate {row['collision_rate']:.4f}, "
                    f"code use per level {use}")  # fmt: skip
    model.load_state_dict(best_state)
    return model.eval(), history

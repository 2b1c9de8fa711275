"""CLIP views regressor: thumbnail + title/description + age → views (seed 004).

Each modality has its own regression head predicting log1p(views): the thumbnail through the
CLIP image tower, ``title. description`` through the CLIP text tower, the video's age (reference
year − upload year) through a small MLP. The prediction is the convex blend

.. math:: \\hat y = \\alpha\\,h_{image} + \\beta\\,h_{text} + \\gamma\\,h_{age},
          \\quad (\\alpha, \\beta, \\gamma) = \\mathrm{softmax}(w)

trained with MSE in log space (= MSLE on views). Each head also gets its own MSE term
(``head_loss_weight``), so every head stays a standalone predictor and the weights read as "how
much the blend trusts each modality" rather than an arbitrary rescaling between heads.
A thumbnail that is missing or unreadable is masked: that row blends text and age only.

With ``freeze_clip`` the towers are frozen and every image and text is encoded once; the features
are cached on disk, keyed by encoder, weights and data, and reused across epochs, folds and runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from harness.config import FRACTION, NON_NEGATIVE, POSITIVE_INT, check_fields
from harness.data import Dataset
from harness.features import FeatureCache
from harness.registry import Family, FitContext, register_model
from harness.tasks import TaskType
from harness.trainer import Trainer
from models.clip_encoder import ClipBundle, encode, load_clip, load_pixels, tokenize, weights_fingerprint

__all__ = ["ClipMultimodalConfig", "ClipViewsModel", "ClipMultimodal", "clip_multimodal", "search_space"]

MODALITIES = ("image", "text", "age")


@dataclass
class ClipMultimodalConfig:
    clip_model: str = "ViT-Tiny-16-64"  # any open_clip architecture; the default is small enough for a CPU
    pretrained: str | None = None  # open_clip tag (e.g. "openai") or a checkpoint file; None: random init
    init_seed: int = 0  # seeds random towers (pretrained None): every fold shares one encoder and its cache
    freeze_clip: bool = True  # freeze the CLIP towers: encode once, train the heads only
    cache_features: bool = True  # with freeze_clip, keep encoded features on disk across epochs/folds/runs
    hidden_dim: int = 128  # width of each modality head
    dropout: float = 0.1  # dropout inside the heads
    head_loss_weight: float = 0.5  # weight of each head's own MSE beside the blended MSE
    weight_lr_scale: float = 30.0  # the α/β/γ logits learn this many times faster than the heads
    clip_lr_scale: float = 0.3  # learning-rate multiplier of the CLIP towers when they are trained
    age_scale: float = 10.0  # years; age enters as age/age_scale and log1p(age)
    encode_batch_size: int = 256  # rows per batch when encoding or predicting


def _head(in_dim: int, hidden_dim: int, dropout: float, normalise: bool = True) -> nn.Sequential:
    """LayerNorm (for embeddings; a 2-feature input would be flattened to ±1) → MLP → one value."""
    norm = nn.LayerNorm(in_dim) if normalise else nn.Identity()
    return nn.Sequential(norm, nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1))


class ClipViewsModel(nn.Module):
    """Three modality heads and their softmax weights, on CLIP features or raw inputs.

    A batch holds ``image_features``/``text_features`` (precomputed) or ``pixels``/``tokens``
    (encoded here, through frozen or trainable towers), plus ``age`` ``[B, 2]``,
    ``image_ok`` ``[B]`` and, for training, ``target`` (standardised log1p views).
    """

    def __init__(self, clip: nn.Module | None, embed_dim: int, config: ClipMultimodalConfig):
        super().__init__()
        self.clip = clip
        self.config = config
        self.heads = nn.ModuleDict({
            "image": _head(embed_dim, config.hidden_dim, config.dropout),
            "text": _head(embed_dim, config.hidden_dim, config.dropout),
            "age": _head(2, config.hidden_dim, config.dropout, normalise=False),
        })  # fmt: skip
        self.weight_logits = nn.Parameter(torch.zeros(len(MODALITIES)))

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "image_features" in batch:
            return batch["image_features"], batch["text_features"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_clip):
            return self.clip.encode_image(batch["pixels"]), self.clip.encode_text(batch["tokens"])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image, text = self.encode(batch)
        inputs = {"image": F.normalize(image.float(), dim=-1), "text": F.normalize(text.float(), dim=-1), "age": batch["age"]}
        heads = torch.cat([self.heads[m](inputs[m]) for m in MODALITIES], dim=1)  # [B, 3]
        weights = self.weight_logits.softmax(0)
        # A masked image drops out of the blend; the other weights are renormalised.
        mask = torch.ones_like(heads)
        mask[:, 0] = batch["image_ok"].float()
        row_weights = weights * mask
        prediction = (heads * row_weights).sum(1) / row_weights.sum(1)
        return {"prediction": prediction, "heads": heads, "mask": mask, "weights": weights}

    def training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self(batch)
        target = batch["target"]
        loss = F.mse_loss(out["prediction"], target)
        if self.config.head_loss_weight > 0:
            head_errors = (out["heads"] - target[:, None]) ** 2 * out["mask"]
            loss = loss + self.config.head_loss_weight * (head_errors.sum(0) / out["mask"].sum(0).clamp(min=1)).mean()
        return loss

    def epoch_logs(self) -> dict[str, float]:
        return {f"weights/{m}": float(w) for m, w in zip(MODALITIES, self.weight_logits.detach().softmax(0))}

    def param_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": list(self.heads.parameters())},
                  {"params": [self.weight_logits], "lr_scale": self.config.weight_lr_scale}]  # fmt: skip
        if self.clip is not None and not self.config.freeze_clip:
            groups.append({"params": list(self.clip.parameters()), "lr_scale": self.config.clip_lr_scale})
        return groups


class _Rows(TorchDataset):
    """Rows ``index`` of a dict of equally long tensors, as dicts (the default collate stacks them)."""

    def __init__(self, tensors: dict[str, torch.Tensor], index: np.ndarray):
        self.tensors, self.index = tensors, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.index[i]
        return {k: v[row] for k, v in self.tensors.items()}


class ClipMultimodal(Family):
    """The family as the harness sees it: fit on a fold, predict views on any rows."""

    task = TaskType.REGRESSION

    def __init__(self, config: ClipMultimodalConfig):
        self.config = config
        self.model: ClipViewsModel | None = None

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        cfg = self.config
        with torch.random.fork_rng():
            torch.manual_seed(cfg.init_seed)
            bundle = load_clip(cfg.clip_model, cfg.pretrained, log=ctx.log)
        if cfg.freeze_clip:
            bundle.model.requires_grad_(False).eval()
        self.device = ctx.device
        self.progress = ctx.train_config.progress
        self._tensors, self._row_of = self._prepare(ctx.dataset, bundle, ctx)
        precomputed = "image_features" in self._tensors
        self.model = ClipViewsModel(None if precomputed else bundle.model, bundle.embed_dim, cfg)

        # Standardise log1p(views) with the training rows' statistics.
        log_target = np.log1p(train[ctx.dataset.target_col].to_numpy(dtype=np.float64))
        self.target_mean, self.target_std = float(log_target.mean()), float(log_target.std() or 1.0)
        target = torch.zeros(len(self._row_of))
        target[self._rows(train)] = torch.from_numpy((log_target - self.target_mean) / self.target_std).float()
        self._tensors["target"] = target

        valid_truth = valid[ctx.dataset.target_col].to_numpy(dtype=np.float64)
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        trainer.fit(
            self.model,
            _Rows(self._tensors, self._rows(train)),
            evaluate=lambda module: ctx.metric.fn(valid_truth, self.predict(valid)),
        )

    def predict(self, part: pd.DataFrame) -> np.ndarray:
        self.model.eval()
        rows = self._rows(part)
        keys = [k for k in self._tensors if k != "target"]
        outputs = []
        with torch.no_grad():
            for start in range(0, len(rows), self.config.encode_batch_size):
                index = rows[start : start + self.config.encode_batch_size]
                batch = {k: self._tensors[k][index].to(self.device) for k in keys}
                outputs.append(self.model(batch)["prediction"].float().cpu())
        log_views = torch.cat(outputs).numpy().astype(np.float64) * self.target_std + self.target_mean
        return np.clip(np.expm1(log_views), 0.0, None)

    def explain(self) -> dict[str, float]:
        return self.model.epoch_logs()

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.model.load_state_dict(state_dict)

    # -- inputs ---------------------------------------------------------------------------------

    def _rows(self, part: pd.DataFrame) -> np.ndarray:
        return part["id"].astype(str).map(self._row_of).to_numpy(dtype=np.int64, copy=True)

    def _prepare(self, dataset: Dataset, bundle: ClipBundle, ctx: FitContext):
        """Tensors for every train and test row; CLIP features when frozen and cached."""
        frame = pd.concat([dataset.train, dataset.test], ignore_index=True)
        row_of = {row_id: i for i, row_id in enumerate(frame["id"].astype(str))}
        age = frame["age"].clip(lower=0).to_numpy(dtype=np.float32)
        tensors = {
            "age": torch.tensor(np.stack([age / self.config.age_scale, np.log1p(age)], axis=1)),
            "image_ok": torch.tensor(frame["image_ok"].to_numpy(dtype=bool)),
        }
        texts = (frame["title"].astype(str) + ". " + frame["description"].astype(str)).tolist()

        def pixels() -> torch.Tensor:
            return load_pixels(frame["image_path"].tolist(), frame["image_ok"].tolist(), bundle.preprocess, self.progress)

        if not (self.config.freeze_clip and self.config.cache_features):
            tensors["pixels"] = pixels()
            tensors["tokens"] = tokenize(texts, bundle.tokenizer)
            return tensors, row_of

        model = bundle.model.to(ctx.device)
        cache = FeatureCache(ctx.cache_dir, log=ctx.log)
        key = {"clip": bundle.name, "pretrained": bundle.pretrained, "weights": weights_fingerprint(model),
               "data": dataset.fingerprint, "preprocess": repr(bundle.preprocess)}  # fmt: skip
        batch = self.config.encode_batch_size
        tensors["image_features"] = cache.get_or_compute("clip-image", key, lambda: encode(
            model.encode_image, pixels(), batch, ctx.device, "encoding images", self.progress))  # fmt: skip
        tensors["text_features"] = cache.get_or_compute("clip-text", key, lambda: encode(
            model.encode_text, tokenize(texts, bundle.tokenizer), batch, ctx.device, "encoding texts", self.progress))  # fmt: skip
        return tensors, row_of


def search_space(trial) -> dict[str, Any]:
    """Optuna search space over the heads and the optimiser (frozen towers keep trials cheap)."""
    return {
        "model": {
            "hidden_dim": trial.suggest_categorical("model.hidden_dim", [64, 128, 256]),
            "dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
            "head_loss_weight": trial.suggest_float("model.head_loss_weight", 0.0, 1.0),
        },
        "train": {
            "lr": trial.suggest_float("train.lr", 1e-4, 3e-3, log=True),
            "weight_decay": trial.suggest_float("train.weight_decay", 1e-4, 0.1, log=True),
        },
    }


def _create_clip_multimodal(config: ClipMultimodalConfig) -> ClipMultimodal:
    check_fields(config, POSITIVE_INT, "hidden_dim", "encode_batch_size")
    check_fields(config, NON_NEGATIVE, "head_loss_weight", "weight_lr_scale", "clip_lr_scale", "age_scale")
    check_fields(config, FRACTION, "dropout")
    return ClipMultimodal(config)


@register_model(
    "clip_multimodal",
    task=TaskType.REGRESSION,
    config=ClipMultimodalConfig,
    dataset="views",
    train_defaults={"epochs": 40, "batch_size": 64, "lr": 1e-3, "patience": 8},
    search_space=search_space,
)
def clip_multimodal(config: ClipMultimodalConfig) -> ClipMultimodal:
    """CLIP views regressor: image + text + age heads blended by learned α/β/γ (seed 004)."""
    return _create_clip_multimodal(config)

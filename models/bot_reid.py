"""The "bag of tricks" re-ID baseline (Luo et al., 2019): the strong non-MoE model the MoE family must beat.

A ResNet trunk with last stride 1, global average pooling, BNNeck, label-smoothed identity
loss + batch-hard triplet on P x K batches, linear warm-up (the training loop's) and random
erasing (:class:`models.reid_head.ReIDHead`, :class:`harness.tasks.reid.ReIDFamily`). With
several modalities (RGBNT201) every modality goes through the same trunk and the embedding is the
mean of the available modalities' pooled features: the plain fusion, no gate.

Defaults are CPU-sized for the embedded 64x32 crops: basic blocks (ResNet-18 layout) at width 16,
stem at stride 2. The ResNet-50 layout at the same cost (bottlenecks at width 8) learnt nothing in
200 steps on the embedded data (test mAP 0.011, chance 0.010; the ResNet-18 layout: 0.051), so it
is one value away (``model.depth=50``), not the default. The paper's setting for Market-1501 at
256x128 on a GPU::

    model: {depth: 50, width: 64, stem: imagenet, last_stride: 1, pretrained: imagenet}
    train: {epochs: 120, batch_size: 64, lr: 3.5e-4, warmup_ratio: 0.08}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.config import FRACTION, NON_NEGATIVE, POSITIVE_INT, check_fields
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.tasks.reid import ReIDFamily
from models.backbones import ResNetTrunk, load_pretrained
from models.reid_head import ReIDHead

__all__ = ["BoTConfig", "BoTReID", "BoTFamily", "bot_reid", "search_space"]


@dataclass
class BoTConfig:
    depth: int = 18  # 18, 34 or 50 (torchvision's block layouts; 50: the paper's)
    width: int = 16  # channels of the first stage (64: the standard ResNet, needed for pretrained)
    stem: str = "small_s2"  # small (stride 1), small_s2 (stride 2) or imagenet (7x7 stride 2 + max-pool)
    last_stride: int = 1  # the BoT trick: stage 4 keeps stage 3's resolution
    pretrained: str | None = None  # None (random init), "imagenet" (torchvision's weights) or a state-dict file
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    instances_per_id: int = 4  # K of the P x K batches (P = train.batch_size / K)
    augmentation: str = "crop_flip_erase"


class BoTReID(nn.Module):
    """Images ``[B, M, 3, H, W]`` → embedding ``[B, C]`` (the after-BNNeck feature)."""

    def __init__(self, config: BoTConfig, n_ids: int):
        super().__init__()
        self.trunk = ResNetTrunk(config.depth, config.width, 3, config.stem, config.last_stride)
        if config.pretrained:
            load_pretrained(self.trunk, config.pretrained, config.depth)
        self.head = ReIDHead(self.trunk.out_channels, n_ids, config.label_smoothing, config.triplet_margin,
                             config.triplet_weight)  # fmt: skip
        self._sums: dict[str, float] = {}
        self._rows = 0

    def features(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the row's available modalities of the globally pooled trunk features."""
        b, m = images.shape[:2]
        pooled = self.trunk(images.flatten(0, 1)).mean((-2, -1)).view(b, m, -1)
        weights = mask.to(pooled.dtype)[..., None]
        return (pooled * weights).sum(1) / weights.sum(1).clamp(min=1)

    def embed(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head.embed(self.features(images, mask))

    def training_step(self, batch) -> torch.Tensor:
        images, mask, labels = batch
        losses = self.head.losses(self.features(images, mask), labels)
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.detach()) * len(labels)
        self._rows += len(labels)
        return sum(losses.values())

    def epoch_logs(self) -> dict[str, float]:
        logs = {f"loss/{name}": total / max(1, self._rows) for name, total in self._sums.items()}
        self._sums, self._rows = {}, 0
        return logs


class BoTFamily(ReIDFamily):
    def __init__(self, config: BoTConfig):
        self.config = config
        self.augmentation, self.instances_per_id = config.augmentation, config.instances_per_id

    def build_network(self, dataset, ctx: FitContext, n_ids: int) -> nn.Module:
        return BoTReID(self.config, n_ids)


def search_space(trial) -> dict[str, Any]:
    return {
        "model": {"width": trial.suggest_categorical("model.width", [16, 32]),
                  "triplet_weight": trial.suggest_float("model.triplet_weight", 0.5, 2.0)},  # fmt: skip
        "train": {"lr": trial.suggest_float("train.lr", 3e-4, 3e-3, log=True),
                  "weight_decay": trial.suggest_float("train.weight_decay", 1e-4, 5e-2, log=True)},  # fmt: skip
    }


@register_model(
    "bot_reid",
    task=TaskType.REID,
    config=BoTConfig,
    dataset="market1501",
    train_defaults={"epochs": 20, "batch_size": 32, "lr": 3e-3, "weight_decay": 5e-4, "patience": 8,
                    "warmup_ratio": 0.1},  # fmt: skip
    search_space=search_space,
)
def bot_reid(config: BoTConfig) -> BoTFamily:
    """Bag-of-tricks re-ID baseline: ResNet-50-style trunk, last stride 1, BNNeck, CE + triplet (baseline)."""
    check_fields(config, POSITIVE_INT, "width", "instances_per_id")
    check_fields(config, NON_NEGATIVE, "triplet_margin", "triplet_weight")
    check_fields(config, FRACTION, "label_smoothing")
    return BoTFamily(config)

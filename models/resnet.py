"""ResNet for small images: the plain-CNN baseline of the classification leaderboard.

torchvision's residual blocks, stacked as in ResNet-18/34 (basic blocks) or -50 (bottlenecks)
(:class:`models.backbones.ResNetTrunk`), with the stem adapted to 32×32-class images as is usual for CIFAR: one 3×3 stride-1 convolution
and no max-pool, so the last stage still sees 4×4 feature maps instead of 1×1. ``width`` scales
every stage (64 is the standard network); smaller widths make CPU-sized variants. A family that
routes tokens through experts has to beat this on the same folds to be worth its complexity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import FRACTION, POSITIVE_INT, check_fields
from harness.errors import HarnessError
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.tasks.classification import ImageClassifier
from models.backbones import DEPTHS, ResNetTrunk

__all__ = ["ResNetConfig", "SmallImageResNet", "ResNetClassifier", "resnet", "search_space", "DEPTHS"]


@dataclass
class ResNetConfig:
    depth: int = 18  # 18, 34 or 50 (torchvision's block layouts)
    width: int = 64  # channels of the first stage, doubled per stage; 64 is the standard ResNet
    dropout: float = 0.0  # before the classifier
    augmentation: str = "crop_flip"  # training augmentation: none, crop (random translations), crop_flip
    pretrained: str | None = None  # a state-dict file of this architecture to start from (e.g. an earlier run's best.pt)


class SmallImageResNet(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, config: ResNetConfig):
        super().__init__()
        self.trunk = ResNetTrunk(config.depth, config.width, in_channels, stem="small")
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(self.trunk.out_channels, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(F.adaptive_avg_pool2d(self.trunk(images), 1).flatten(1)))

    def training_step(self, batch) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)


class ResNetClassifier(ImageClassifier):
    def __init__(self, config: ResNetConfig):
        self.config = config
        self.augmentation = config.augmentation

    def build_network(self, dataset, ctx: FitContext) -> nn.Module:
        _, _, channels = dataset.meta["image_shape"]
        network = SmallImageResNet(channels, int(dataset.meta["n_classes"]), self.config)
        if self.config.pretrained:
            state = torch.load(self.config.pretrained, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            try:
                network.load_state_dict(state)
            except RuntimeError as exc:
                reason = " ".join(str(exc).split())[:200]
                raise HarnessError(f"model.pretrained {self.config.pretrained!r} does not fit this network: {reason}") from None
        return network


def search_space(trial) -> dict[str, Any]:
    return {
        "model": {
            "width": trial.suggest_categorical("model.width", [16, 32, 64]),
            "dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
        },
        "train": {"lr": trial.suggest_float("train.lr", 3e-4, 3e-3, log=True),
                  "weight_decay": trial.suggest_float("train.weight_decay", 1e-4, 5e-2, log=True)},  # fmt: skip
    }


@register_model(
    "resnet",
    task=TaskType.CLASSIFICATION,
    config=ResNetConfig,
    dataset="cifar10",
    train_defaults={"epochs": 30, "batch_size": 128, "lr": 2e-3, "weight_decay": 5e-2, "patience": 8,
                    "warmup_ratio": 0.05},  # fmt: skip
    search_space=search_space,
)
def resnet(config: ResNetConfig) -> ResNetClassifier:
    """ResNet-18 with a small-image stem (3x3, no max-pool): the plain CNN baseline (baseline)."""
    if config.depth not in DEPTHS:
        raise HarnessError(f"model.depth must be one of {', '.join(map(str, DEPTHS))}, got {config.depth!r}.")
    check_fields(config, POSITIVE_INT, "width")
    check_fields(config, FRACTION, "dropout")
    if config.pretrained and not Path(config.pretrained).is_file():
        raise HarnessError(f"model.pretrained {config.pretrained!r} is not a file.")
    return ResNetClassifier(config)

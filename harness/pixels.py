"""Pixels to network inputs, the same way for every image family: standardise, augment.

Statistics come from the fold's own training rows (never validation or test pixels), so a fold's
inputs leak nothing; augmentations draw from torch's seeded RNG, so runs repeat exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError

__all__ = ["Standardiser", "AUGMENTATIONS", "augment", "check_augmentation"]

AUGMENTATIONS = ("none", "crop", "crop_flip")


class Standardiser:
    """uint8 ``[B, H, W, C]`` pixels → float ``[B, C, H, W]`` with zero mean, unit variance per channel."""

    def __init__(self, pixels: np.ndarray | torch.Tensor):
        values = torch.as_tensor(pixels).flatten(0, 2).float() / 255.0  # [N·H·W, C]
        self.mean = values.mean(0).view(1, -1, 1, 1)
        self.std = values.std(0).clamp(min=1e-3).view(1, -1, 1, 1)

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(pixels).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std


def check_augmentation(augmentation: str, where: str = "model.augmentation") -> None:
    if augmentation not in AUGMENTATIONS:
        raise HarnessError(f"{where} must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}.")


def augment(images: torch.Tensor, augmentation: str) -> torch.Tensor:
    """Random translations (reflect-pad by 1/8 of the side, random crop back) and, with ``crop_flip``,
    horizontal flips: the standard CIFAR recipe. Flips are wrong where left and right matter
    (digits, captions saying "left of"): use ``crop`` there."""
    if augmentation == "none":
        return images
    n, _, height, width = images.shape
    pad = max(1, height // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]  # [n, 1, H, 1]
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]  # [n, 1, 1, W]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]
    if augmentation == "crop_flip":
        flip = torch.rand(n) < 0.5
        out[flip] = out[flip].flip(-1)
    return out

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

AUGMENTATIONS = ("none", "crop", "crop_flip", "crop_flip_erase")


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
    """Random translations (reflect-pad by 1/8 of each side, random crop back) and, with ``crop_flip``,
    horizontal flips: the standard CIFAR recipe. Flips are wrong where left and right matter
    (digits, captions saying "left of"): use ``crop`` there. ``crop_flip_erase`` adds random
    erasing (Zhong et al., 2020; the re-ID "bag of tricks"): with probability 0.5 a box of 2-40% of
    the image, aspect ratio 0.3-3.3, is set to 0, the standardised mean."""
    if augmentation == "none":
        return images
    n, _, height, width = images.shape
    pad_y, pad_x = max(1, height // 8), max(1, width // 8)
    padded = F.pad(images, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad_y + 1, (n,)), torch.randint(0, 2 * pad_x + 1, (n,))
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]  # [n, 1, H, 1]
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]  # [n, 1, 1, W]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]
    if augmentation in ("crop_flip", "crop_flip_erase"):
        flip = torch.rand(n) < 0.5
        out[flip] = out[flip].flip(-1)
    if augmentation == "crop_flip_erase":
        out = _erase(out)
    return out


def _erase(images: torch.Tensor, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
           aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:  # fmt: skip
    """Random erasing, one box per image at most, drawn from torch's RNG (a vectorised box mask)."""
    n, _, height, width = images.shape
    target = torch.empty(n).uniform_(*area) * height * width
    ratio = torch.exp(torch.empty(n).uniform_(np.log(aspect[0]), np.log(aspect[1])))
    h = (target * ratio).sqrt().round().clamp(1, height).long()
    w = (target / ratio).sqrt().round().clamp(1, width).long()
    top = (torch.rand(n) * (height - h + 1)).long()
    left = (torch.rand(n) * (width - w + 1)).long()
    rows, cols = torch.arange(height), torch.arange(width)
    inside = (((rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None]))[:, :, None]
              & ((cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None]))[:, None, :])  # fmt: skip
    inside &= (torch.rand(n) < p)[:, None, None]
    return images.masked_fill(inside[:, None], 0.0)

"""A disk cache for expensive features (frozen encoder outputs), keyed by what determines them.

The key is a hash of everything the features depend on (encoder name, weights fingerprint, data
fingerprint, preprocessing), so a cache entry is reused across epochs, folds and later runs, and
never reused when any of those change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from harness.io import atomic_write

__all__ = ["FeatureCache"]


class FeatureCache:
    def __init__(self, directory: str | Path, log: Callable[[str], None] = print):
        self.directory = Path(directory)
        self.log = log

    def path(self, name: str, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self.directory / f"{name}-{digest}.pt"

    def get_or_compute(self, name: str, key: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Load the tensor cached under ``key``, or compute, store and return it."""
        path = self.path(name, key)
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache entry is recomputed, not fatal
                self.log(f"feature cache {path} is unreadable; recomputing it")
        features = compute()
        atomic_write(path, lambda tmp: torch.save(features, tmp))
        self.log(f"cached {name} features {tuple(features.shape)} in {path}")
        return features

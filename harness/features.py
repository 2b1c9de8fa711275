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

from harness.data import create_once
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
        """Load the tensor cached under ``key``, or compute, store and return it.

        Of processes needing the same missing entry at once, one computes it while the others
        wait, then load its file instead of encoding everything again.
        """
        path = self.path(name, key)
        features = self._load(path)
        if features is None:
            with create_once(path) as missing:
                if not missing:  # stored by another process while this one waited
                    return torch.load(path, map_location="cpu", weights_only=True)
                features = compute()
                atomic_write(path, lambda tmp: torch.save(features, tmp))
                self.log(f"cached {name} features {tuple(features.shape)} in {path}")
        return features

    def _load(self, path: Path) -> torch.Tensor | None:
        """The cached tensor, or ``None`` if there is none; a damaged entry is removed to be recomputed."""
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache entry is recomputed, not fatal
            self.log(f"feature cache {path} is unreadable; recomputing it")
            path.unlink(missing_ok=True)
            return None

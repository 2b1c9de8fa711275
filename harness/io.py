"""Writing files so that nothing is ever half-written, and reading checkpoints with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from harness.errors import HarnessError

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint"]


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The rename is atomic on one filesystem: readers see the old file or the new one, never a
    partial one, and a failure leaves no file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with weights only, turning a missing or corrupt file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise HarnessError(f"Checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({reason}).") from exc

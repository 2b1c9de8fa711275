"""Seeding, device choice and the facts about the environment that every run logs."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from harness.errors import HarnessError

__all__ = ["seed_everything", "resolve_device", "package_versions", "git_commit"]

_LOGGED_PACKAGES = (
    "torch", "torchvision", "open_clip_torch", "transformers", "scikit-learn",
    "optuna", "mlflow", "pandas", "polars", "lightgbm", "numpy",
)  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Needed by cuBLAS for deterministic matmuls; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present; an unavailable device is an error, not a silent fallback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HarnessError(f"--device {device!r} was requested but CUDA is not available; use --device cpu.")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise HarnessError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present.")
        return device
    if device != "cpu":
        raise HarnessError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}.")
    return device


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LOGGED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The checked-out commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit

"""Epoch time of the CLIP views regressor on cached frozen features vs re-encoding every batch.

Both sides train the same heads on the same fold of the embedded views data with frozen CLIP
towers; one reads features encoded once (and cached on disk), the other runs the towers on every
batch, as a pipeline without a feature cache does. Printed as a ratio measured in this run.

    python bench/bench_feature_cache.py                       # the default tiny architecture
    python bench/bench_feature_cache.py --clip-model ViT-B-32 --rows 400 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness.config import TrainConfig
from harness.data import load_dataset
from harness.metrics import get_metric
from harness.registry import FitContext, create_model
from harness.runtime import resolve_device, seed_everything


def epoch_seconds(dataset, rows: int, cache_features: bool, args, cache_dir: Path) -> tuple[float, float]:
    """(median seconds per epoch after the first, seconds before the first epoch ended)."""
    seed_everything(0)
    train = dataset.train.iloc[: rows * 2 // 3]
    valid = dataset.train.iloc[rows * 2 // 3 : rows]
    family = create_model("clip_multimodal", {"clip_model": args.clip_model, "freeze_clip": True,
                                              "cache_features": cache_features})  # fmt: skip
    stamps: list[float] = []
    ctx = FitContext(
        dataset=dataset, metric=get_metric("msle"), device=args.device, seed=0, fold=0,
        train_config=TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=64, progress=False),
        workdir=Path(tempfile.mkdtemp()), cache_dir=cache_dir,
        log_metrics=lambda metrics, step: stamps.append(time.perf_counter()), log=lambda message: None,
    )  # fmt: skip
    started = time.perf_counter()
    family.fit(train, valid, ctx)
    per_epoch = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(per_epoch), stamps[0] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", default="ViT-Tiny-16-64")
    parser.add_argument("--rows", type=int, default=2000, help="training rows used (2/3 train, 1/3 valid)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.device = resolve_device(args.device)

    dataset = load_dataset("views")
    rows = min(args.rows, len(dataset.train))
    with tempfile.TemporaryDirectory() as cache_dir:
        cached, first_cached = epoch_seconds(dataset, rows, True, args, Path(cache_dir))
        reencoded, _ = epoch_seconds(dataset, rows, False, args, Path(cache_dir))
    print(f"CLIP {args.clip_model}, {rows} rows ({rows * 2 // 3} trained on), device {args.device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"  cached frozen features : {cached:8.3f} s/epoch (one-off encoding + first epoch {first_cached:.2f} s)")
    print(f"  re-encoding per batch  : {reencoded:8.3f} s/epoch")
    print(f"  speed-up from caching  : {reencoded / cached:8.1f}x")


if __name__ == "__main__":
    main()

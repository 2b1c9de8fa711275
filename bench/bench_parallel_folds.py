"""Wall time of K folds run sequentially vs in K worker processes, printed as a speed-up.

Both sides run the same CV (same folds, seed and threads per fold, tracking off) of the CLIP
views regressor on the embedded data; only the number of fold processes differs.

    python bench/bench_parallel_folds.py --folds 2
    python bench/bench_parallel_folds.py --folds 2 --epochs 3 --train-towers
    python bench/bench_parallel_folds.py --folds 4 --devices cuda:0,cuda:1,cuda:2,cuda:3
"""

from __future__ import annotations

import argparse
import os
import time

from harness.cv import make_run_config, run_cv


def wall_seconds(layers: list[dict]) -> float:
    started = time.perf_counter()
    run_cv(make_run_config("clip_multimodal", *layers), log=lambda message: None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--devices", help="comma-separated devices for the parallel side (default: CPU workers)")
    parser.add_argument("--train-towers", action="store_true", help="train the CLIP towers (heavier folds)")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.folds)
    common = {"folds": args.folds, "tracking": False, "threads_per_fold": threads,
              "train": {"epochs": args.epochs, "patience": args.epochs, "progress": False},
              "model": {"freeze_clip": not args.train_towers}}  # fmt: skip
    wall_seconds([common])  # warm-up: generates the data and fills the feature cache for both sides
    sequential = wall_seconds([common])
    parallel_layer = {"devices": args.devices} if args.devices else {"workers": args.folds}
    parallel = wall_seconds([common, parallel_layer])
    towers = "trained" if args.train_towers else "frozen"
    print(f"{args.folds} folds x {args.epochs} epochs, CLIP towers {towers}, {threads} threads per fold, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(f"  sequential           : {sequential:7.1f} s")
    print(f"  {args.folds} worker processes   : {parallel:7.1f} s")
    print(f"  speed-up             : {sequential / parallel:7.2f}x")


if __name__ == "__main__":
    main()

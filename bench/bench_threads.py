"""Torch threads per fold: one thread against all cores, on an idle and on a loaded machine.

Trains one fold of a family on the embedded data with ``threads_per_fold=1`` and with one thread
per core, first on an otherwise idle machine, then with one busy process per core running beside
it (the situation of a shared workstation, a CI runner or several runs at once). Same seed, same
fold, same epochs; the scores must agree to print a ratio. Prints seconds per configuration and
the ratio all-cores / one-thread (above 1: one thread is faster).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from harness.cv import fit_fold, make_run_config, resolve_run_config
from harness.data import load_dataset
from harness.folds import get_folds

BUDGETS = {"clip_multimodal": {"epochs": 20}, "sasrec": {"epochs": 3}, "hier_moe_rec": {"epochs": 1}}


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1_000_003


def one_fold(model: str, threads: int, workdir: str) -> tuple[float, float]:
    config = resolve_run_config(make_run_config(model, {"train": {**BUDGETS[model], "progress": False},
                                                        "threads_per_fold": threads}))  # fmt: skip
    dataset = load_dataset(config.data.name, data_root=config.data.root)
    _, folds = get_folds(dataset, config.fold_scheme, config.folds, config.fold_seed, config.folds_dir)
    fold_of = dict(zip(folds["id"], folds["fold"]))
    train_fold = dataset.train[dataset.id_col].astype(str).map(fold_of).to_numpy()
    started = time.perf_counter()
    outcome = fit_fold(config, dataset, train_fold, 0, Path(workdir), "cpu", threads, log=lambda message: None)
    return time.perf_counter() - started, outcome.score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip_multimodal,sasrec,hier_moe_rec")
    parser.add_argument("--workdir", default="leaderboard/bench-threads")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores; one fold each, seed 42")
    print(f"{'model':<16}{'machine':<9}{'1 thread':>10}{f'{cores} threads':>12}{'ratio':>8}   score (1 / all)")
    for model in args.models.split(","):
        one_fold(model, 1, args.workdir)  # warm-up: data generation, feature caches
        for load in ("idle", "loaded"):
            stop = multiprocessing.Event()
            busy = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(cores if load == "loaded" else 0)]
            for process in busy:
                process.start()
            try:
                (single, s1), (many, s2) = one_fold(model, 1, args.workdir), one_fold(model, cores, args.workdir)
            finally:
                stop.set()
                for process in busy:
                    process.join()
            same = "same" if np.isclose(s1, s2, rtol=1e-3) else "differ"
            print(f"{model:<16}{load:<9}{single:>9.1f}s{many:>11.1f}s{many / single:>7.2f}x   {s1:.4f} / {s2:.4f} ({same})")


if __name__ == "__main__":
    main()

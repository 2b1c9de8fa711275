"""Fold schemes, persisted as ``folds/<dataset>-<fingerprint>__<scheme>__k<K>__s<seed>.csv``.

A fold file has two columns, ``id`` and ``fold``: row ``id`` is validated in fold ``fold`` and
trained on in every other. Files are reused when present, so every model of a dataset is
scored on the same split (a precondition for fair comparison and for blending), and validated
each time they are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

from harness.data import Dataset, create_once
from harness.errors import HarnessError
from harness.io import atomic_write

__all__ = ["FOLD_SCHEMES", "make_folds", "validate_folds", "fold_file_path", "get_folds"]


def _kfold(dataset: Dataset, n_splits: int, seed: int):
    return KFold(n_splits, shuffle=True, random_state=seed).split(dataset.train)


def _stratified(dataset: Dataset, n_splits: int, seed: int):
    """StratifiedKFold on the target; a continuous target is binned into quantiles first."""
    target = dataset.train[dataset.target_col]
    if pd.api.types.is_float_dtype(target) and target.nunique() > 20:
        # As many quantile bins as keep at least n_splits rows per bin (at most 10).
        n_bins = int(max(2, min(10, len(target) // n_splits)))
        target = pd.qcut(target.rank(method="first"), n_bins, labels=False)
    return StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(dataset.train, target)


def _group(dataset: Dataset, n_splits: int, seed: int):
    if dataset.group_col is None:
        raise HarnessError(f"Fold scheme 'group' needs a group column, but dataset {dataset.name!r} has none.")
    groups = dataset.train[dataset.group_col]
    if groups.nunique() < n_splits:
        raise HarnessError(
            f"--folds {n_splits} is more than the {groups.nunique()} groups ({dataset.group_col!r} values) of "
            f"{dataset.name!r}; every fold needs a group of its own."
        )
    return GroupKFold(n_splits, shuffle=True, random_state=seed).split(dataset.train, groups=groups)


# Each scheme yields (train_index, valid_index) pairs, as scikit-learn splitters do.
FOLD_SCHEMES: dict[str, Callable] = {"kfold": _kfold, "stratified": _stratified, "group": _group}


def make_folds(dataset: Dataset, scheme: str, n_splits: int, seed: int) -> pd.DataFrame:
    """Assign each training row a validation fold; returns a frame ``id, fold``."""
    if scheme not in FOLD_SCHEMES:
        raise HarnessError(f"Unknown fold scheme {scheme!r}, valid schemes: {', '.join(FOLD_SCHEMES)}.")
    n_rows = len(dataset.train)
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise HarnessError(f"--folds must be an integer of at least 2, got {n_splits!r}.")
    if n_splits > n_rows:
        raise HarnessError(f"--folds {n_splits} is more than the {n_rows} training rows of {dataset.name!r}.")
    fold = np.full(n_rows, -1, dtype=np.int64)
    for k, (_, valid_index) in enumerate(FOLD_SCHEMES[scheme](dataset, n_splits, seed)):
        fold[valid_index] = k
    return pd.DataFrame({"id": dataset.train[dataset.id_col].astype(str).to_numpy(), "fold": fold})


def validate_folds(
    folds: pd.DataFrame, dataset: Dataset, n_splits: int, source: str = "folds", check_groups: bool = False
) -> None:
    """Every row in exactly one of folds 0..K-1, no unknown ids; with ``check_groups``, no group in two folds."""
    if list(folds.columns) != ["id", "fold"]:
        raise HarnessError(f"{source}: expected columns id,fold, got {','.join(map(str, folds.columns))}.")
    ids = dataset.train[dataset.id_col].astype(str)
    if folds["id"].duplicated().any():
        dup = folds.loc[folds["id"].duplicated(), "id"].iloc[0]
        raise HarnessError(f"{source}: id {dup!r} is in more than one fold.")
    missing = set(ids) - set(folds["id"])
    extra = set(folds["id"]) - set(ids)
    if missing or extra:
        raise HarnessError(
            f"{source}: does not match the dataset's ids ({len(missing)} missing, {len(extra)} unknown); "
            "delete it to re-create the folds."
        )
    present = set(folds["fold"].tolist())
    if present != set(range(n_splits)):
        raise HarnessError(f"{source}: expected folds 0..{n_splits - 1}, found {sorted(present)}.")
    if check_groups:
        by_id = dict(zip(ids, dataset.train[dataset.group_col]))
        spread = folds.assign(group=folds["id"].map(by_id)).groupby("group")["fold"].nunique()
        if (spread > 1).any():
            raise HarnessError(f"{source}: group '{spread[spread > 1].index[0]}' appears in more than one fold.")


def fold_file_path(folds_dir: str | Path, dataset: Dataset, scheme: str, n_splits: int, seed: int) -> Path:
    """The data fingerprint is part of the name, so real data never reuses the default's folds."""
    stem = f"{dataset.name}-{dataset.fingerprint[:8]}__{scheme}__k{n_splits}__s{seed}"
    return Path(folds_dir) / f"{stem}.csv"


def get_folds(
    dataset: Dataset, scheme: str, n_splits: int, seed: int, folds_dir: str | Path = "folds"
) -> tuple[Path, pd.DataFrame]:
    """Reuse the fold file for this dataset/scheme/K/seed, or create, validate and write it.

    Processes starting together write it once (the split is the same in each: it is seeded): the
    first writes it under a lock, the others wait and read that file.
    """
    path = fold_file_path(folds_dir, dataset, scheme, n_splits, seed)
    if not path.exists():
        folds = make_folds(dataset, scheme, n_splits, seed)
        validate_folds(folds, dataset, n_splits, source=str(path), check_groups=scheme == "group")
        with create_once(path) as missing:
            if missing:
                atomic_write(path, lambda tmp: folds.to_csv(tmp, index=False))
                return path, folds
    folds = pd.read_csv(path, dtype={"id": str, "fold": np.int64})
    validate_folds(folds, dataset, n_splits, source=str(path), check_groups=scheme == "group")
    return path, folds

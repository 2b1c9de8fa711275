"""What every sequential-recommendation reader does after parsing: interactions -> leave-one-out sequences.

A reader parses its files into four parallel arrays (raw user id, raw item id, rating, timestamp;
in file order) and hands them to :func:`build_sequences`, which

* merges a user's repeated interactions with one item into the latest (ties: the higher rating,
  then the later line);
* keeps interactions rated ``>= min_rating`` (``None``: all);
* removes users and items with too few interactions, repeatedly, until none is left (k-core);
* renumbers users ``1 .. U`` and items ``1 .. I`` in ascending raw id (0 is the padding item);
* orders each user's items by time, equal times in file order (``tie_order="file"``) or by item
  id (``tie_order="item_id"``);
* describes everything it merged or dropped in one sentence, for the reader's one warning.

:func:`leave_one_out_dataset` then turns the sequences into the :class:`~harness.data.Dataset` of
:class:`~harness.tasks.TaskType.SEQUENTIAL_RECOMMENDATION`. The readers share the option checks
(:func:`check_sequence_options`), the item-file lookup (:func:`files_by_stem`) and the user texts
built from training histories (:func:`history_texts`), so every dataset means the same by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.data import Dataset
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = [
    "TIE_ORDERS",
    "NEGATIVE_SAMPLINGS",
    "IMAGE_SUFFIXES",
    "Sequences",
    "check_sequence_options",
    "build_sequences",
    "leave_one_out_dataset",
    "k_core",
    "files_by_stem",
    "history_texts",
    "object_column",
]

TIE_ORDERS = ("file", "item_id")  # orders of a user's interactions with equal timestamps
NEGATIVE_SAMPLINGS = ("uniform", "popularity")  # how the `_sampled` protocol draws negatives
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # preference order when one item has several images


@dataclass
class Sequences:
    """Time-ordered item sequences of the users left after filtering.

    ``sequences[u - 1]`` holds user ``u``'s item ids, oldest first; ``raw_users[u - 1]`` and
    ``raw_items[i - 1]`` are the raw ids of user ``u`` and item ``i``. ``stats`` counts what was
    read, merged and filtered; ``report`` is the sentence to warn with ('' if nothing was dropped).
    """

    raw_users: np.ndarray
    raw_items: np.ndarray
    sequences: list[np.ndarray]
    stats: dict[str, int]
    report: str


def check_sequence_options(
    min_rating, min_user_interactions, min_item_interactions, sampled_negatives, negative_sampling, tie_order
) -> None:
    """Raise a one-line :class:`HarnessError` for a reader option out of its domain."""
    if min_rating is not None and (
        isinstance(min_rating, bool) or not isinstance(min_rating, Real) or not np.isfinite(min_rating)
    ):
        raise HarnessError(f"min_rating must be a number or None (keep every rating), got {min_rating!r}.")
    for name, value, least, why in (
        ("min_user_interactions", min_user_interactions, 3,
         "leave-one-out needs a history, a validation item and a test item per user"),
        ("min_item_interactions", min_item_interactions, 1, "an item needs an interaction to be in the catalogue"),
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise HarnessError(f"{name} must be an integer >= {least} ({why}), got {value!r}.")
    if isinstance(sampled_negatives, bool) or not isinstance(sampled_negatives, Integral) or sampled_negatives < 1:
        raise HarnessError(f"sampled_negatives must be an integer >= 1, got {sampled_negatives!r}.")
    if negative_sampling not in NEGATIVE_SAMPLINGS:
        raise HarnessError(f"negative_sampling must be 'uniform' or 'popularity', got {negative_sampling!r}.")
    if tie_order not in TIE_ORDERS:
        raise HarnessError(f"tie_order must be one of {', '.join(map(repr, TIE_ORDERS))}, got {tie_order!r}.")


def build_sequences(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray,
    *,
    source: Path,
    min_rating: float | None,
    min_user_interactions: int,
    min_item_interactions: int,
    tie_order: str,
    item_noun: str = "item",
    event_noun: str = "rating",
) -> Sequences:
    """Merge, threshold, k-core filter, renumber and time-order interactions given in file order.

    Raw ids may be integers or strings (renumbering follows their sort order). ``source`` names
    the interactions file in the error raised when nothing is left; ``item_noun`` and
    ``event_noun`` (singular, plural with "s") word the report, e.g. "movie" and "rating".
    """
    users, raw_user_values = _codes(users)
    items, raw_item_values = _codes(items)
    stats = {"ratings_read": len(users)}
    n_users_before, n_items_before = len(raw_user_values), len(raw_item_values)
    rows = np.arange(len(users))  # the file's row order

    # one interaction per (user, item), the latest; then the rating threshold
    order = np.lexsort((rows, ratings, timestamps, items, users))
    users, items, ratings, timestamps, rows = users[order], items[order], ratings[order], timestamps[order], rows[order]
    last = np.r_[(users[1:] != users[:-1]) | (items[1:] != items[:-1]), True]
    stats["duplicates"] = int((~last).sum())
    above = np.ones(len(users), bool) if min_rating is None else ratings >= min_rating
    stats["below_min_rating"] = int((last & ~above).sum())
    keep = last & above
    users, items, timestamps, rows = users[keep], items[keep], timestamps[keep], rows[keep]
    stats["ratings_after_threshold"] = len(users)

    # iterative k-core
    keep = k_core(users, items, min_user_interactions, min_item_interactions)
    stats["interactions_filtered"] = int((~keep).sum())
    users, items, timestamps, rows = users[keep], items[keep], timestamps[keep], rows[keep]
    if not len(users):
        raise HarnessError(
            f"{source}: no interactions left after min_rating={min_rating}, "
            f"min_user_interactions={min_user_interactions}, min_item_interactions={min_item_interactions} "
            f"({stats['ratings_read']} {event_noun}s read); lower the thresholds."
        )
    kept_users, kept_items = np.unique(users), np.unique(items)
    stats["users_filtered"] = n_users_before - len(kept_users)
    stats["items_filtered"] = n_items_before - len(kept_items)
    report = _filter_report(stats, n_users_before, n_items_before, min_rating, min_user_interactions,
                            min_item_interactions, item_noun, event_noun)  # fmt: skip

    # sequences: remapped ids, time order, equal times in file or item-id order
    user_ids = np.searchsorted(kept_users, users) + 1
    item_ids = np.searchsorted(kept_items, items) + 1
    order = np.lexsort((rows if tie_order == "file" else item_ids, timestamps, user_ids))
    user_ids, item_ids, timestamps = user_ids[order], item_ids[order], timestamps[order]
    same_user = user_ids[1:] == user_ids[:-1]
    stats["tied_timestamps"] = int((same_user & (timestamps[1:] == timestamps[:-1])).sum())
    sequences = np.split(item_ids, np.flatnonzero(~same_user) + 1)
    stats.update(users=len(kept_users), items=len(kept_items), interactions=len(item_ids))
    return Sequences(raw_user_values[kept_users], raw_item_values[kept_items], sequences, stats, report)


def leave_one_out_dataset(name: str, sequences: list[np.ndarray], user_text: list[str], root: Path,
                          meta: dict[str, Any], options: dict[str, Any]) -> Dataset:  # fmt: skip
    """The :class:`~harness.data.Dataset` of ``sequences``: ``train`` (history ``s_1 .. s_{n-2}``,
    target ``s_{n-1}``) and ``test`` (``s_1 .. s_{n-1}``, target ``s_n``).

    One row per user, ``user_id`` ``1 .. U`` in the order of ``sequences``; ``history`` cells are
    int64 arrays, oldest first. ``meta`` holds the reader's catalogue (``n_items``, ``items``, ...).
    """
    user_ids = np.arange(1, len(sequences) + 1, dtype=np.int64)

    def frame(cut: int) -> pd.DataFrame:
        return pd.DataFrame({
            "user_id": user_ids,
            "history": object_column([s[:-cut].copy() for s in sequences]),
            "target": np.array([s[-cut] for s in sequences], dtype=np.int64),
            "user_text": user_text,
        })  # fmt: skip

    return Dataset(name=name, task=TaskType.SEQUENTIAL_RECOMMENDATION, train=frame(2), test=frame(1),
                   id_col="user_id", target_col="target", root=root, group_col=None, meta=meta,
                   media_cols=("poster_path",), options=options)  # fmt: skip


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Mask of the interactions left once every user has ``>= min_user`` and every item ``>= min_item``."""
    user_codes = np.unique(users, return_inverse=True)[1].ravel()
    item_codes = np.unique(items, return_inverse=True)[1].ravel()
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max(initial=-1) + 1)
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max(initial=-1) + 1)
        still = keep & (user_counts[user_codes] >= min_user) & (item_counts[item_codes] >= min_item)
        if (still == keep).all():
            return keep
        keep = still


def files_by_stem(folder: Path, keys: list[str]) -> tuple[list[str | None], set[str]]:
    """Absolute path of the image named ``<key>.jpg`` / ``.jpeg`` / ``.png`` in ``folder`` for each key.

    Files are found by name, not decoded. A key without a file gets ``None``; the second value is
    the set of file stems matching no key. ``.jpg`` wins over ``.jpeg`` over ``.png``.
    """
    if not folder.is_dir():
        return [None] * len(keys), set()
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    files: dict[str, Path] = {}
    for path in sorted(images, key=lambda p: (p.stem, IMAGE_SUFFIXES.index(p.suffix.lower()), p.name)):
        files.setdefault(path.stem.strip(), path)
    base = folder.absolute()
    return [str(base / files[key].name) if key in files else None for key in keys], set(files) - set(keys)


def history_texts(
    histories: list[np.ndarray],
    item_genres: list[list[str]],
    titles: list[str],
    genre_order: list[str],
    template: str,
    *,
    any_genre: str,
    n_genres: int = 3,
    n_titles: int = 5,
) -> list[str]:
    """``template`` filled with each history's most frequent genres and its last titles.

    ``item_genres[i - 1]`` and ``titles[i - 1]`` describe item ``i``; ``genres`` are the
    ``n_genres`` most frequent in the history (ties in ``genre_order``; genres outside it are not
    named), ``", "``-joined, or ``any_genre`` when it has none; ``titles`` the last ``n_titles``,
    most recent last, ``"; "``-joined. Give training histories only, so no text names a held-out item.
    """
    column = {g: j for j, g in enumerate(genre_order)}
    membership = np.zeros((len(titles) + 1, len(genre_order)), dtype=np.int64)  # row 0: padding
    for row, names in enumerate(item_genres, 1):
        for g in names:
            if g in column:
                membership[row, column[g]] = 1
    title_of = np.array(["", *titles], dtype=object)
    out = []
    for history in histories:
        counts = membership[history].sum(axis=0)
        top = [genre_order[j] for j in np.lexsort((np.arange(len(genre_order)), -counts)) if counts[j] > 0][:n_genres]
        recent = title_of[history[-n_titles:]]
        out.append(template.format(genres=", ".join(top) if top else any_genre, titles="; ".join(recent)))
    return out


def object_column(values: list) -> np.ndarray:
    """A 1-d object array of ``values`` (numpy would stack equal-length arrays into 2-d)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _codes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in ascending raw-id order, and the raw id of each code."""
    values, codes = np.unique(np.asarray(raw), return_inverse=True)
    return codes.ravel().astype(np.int64), values


def _filter_report(stats: dict, n_users: int, n_items: int, min_rating, min_user: int, min_item: int,
                   item_noun: str, event_noun: str) -> str:  # fmt: skip
    """One sentence naming every interaction, user and item dropped, and why ('' if none)."""
    parts = []
    if stats["duplicates"]:
        parts.append(f"merged {stats['duplicates']:,} repeated (user, {item_noun}) {event_noun}s into their latest")
    if stats["below_min_rating"]:
        parts.append(f"dropped {stats['below_min_rating']:,} {event_noun}s below min_rating={min_rating}")
    if stats["interactions_filtered"]:
        parts.append(
            f"the k-core filter (at least {min_user} interactions per user and {min_item} per {item_noun}, repeated "
            f"until stable) dropped {stats['interactions_filtered']:,} interactions"
        )
    totals = (("users_filtered", n_users, "users"), ("items_filtered", n_items, f"{item_noun}s"))
    dropped = [f"{stats[key]:,} of {total:,} {what}" for key, total, what in totals if stats[key]]
    if dropped:
        parts.append(f"{' and '.join(dropped)} are left out (in neither train nor test)")
    return "; ".join(parts) + "." if parts else ""

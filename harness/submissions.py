"""Submission files read back: the checks every task's format shares, and ranked lists as predictions.

A submission is a CSV whose first column names the row it answers (``id``, ``user_id``) and
whose other columns hold the prediction, in the format each task adapter's ``submission`` method
writes. The adapter's ``read_submission`` reads one back through these helpers, so every format
violation is one line naming the file, the row (counted from 1 after the header), the column and
what was expected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError

__all__ = ["read_csv", "check_header", "match_rows", "cell_error", "parse_numbers", "parse_lists", "RankedLists",
           "file_digest"]  # fmt: skip


def read_csv(path: str | Path) -> pd.DataFrame:
    """Every cell of ``path`` as text: nothing is parsed, an empty cell stays ``""``."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{str(path)!r} does not exist.")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable CSV file ({' '.join(str(exc).split())}).") from None


def check_header(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    if list(frame.columns) != list(columns):
        raise HarnessError(f"{source}: the header is {','.join(map(str, frame.columns))!r}; expected "
                           f"{','.join(columns)!r}.")  # fmt: skip


def cell_error(frame: pd.DataFrame, source: str, row: int, column: str, problem: str) -> HarnessError:
    """The one-line error of cell (``row``, ``column``), ``row`` 0-based; it names the row's key too."""
    key = frame.columns[0]
    return HarnessError(f"{source}: row {row + 1} ({key} {frame[key].iat[row]!r}), column {column!r}: {problem}.")


def match_rows(frame: pd.DataFrame, keys: pd.Series, source: str, what: str, dataset: str) -> np.ndarray:
    """The row of ``frame`` answering each of ``keys``, in their order, by its first column.

    Refuses a key listed twice, a key not among ``keys`` and keys without a row; ``what`` names a
    key in the messages (``"test id"``), ``dataset`` the data it belongs to.
    """
    column = frame.columns[0]
    given = frame[column]
    twice = given.duplicated().to_numpy()
    if twice.any():
        row = int(np.argmax(twice))
        first = int(np.argmax((given == given.iat[row]).to_numpy()))
        raise HarnessError(f"{source}: row {row + 1}, column {column!r}: {given.iat[row]!r} is listed twice "
                           f"(first in row {first + 1}); expected one row per {what}.")  # fmt: skip
    unknown = ~given.isin(keys).to_numpy()
    if unknown.any():
        row = int(np.argmax(unknown))
        raise HarnessError(f"{source}: row {row + 1}, column {column!r}: {given.iat[row]!r} is not a {what} of "
                           f"{dataset}; expected one row per {what}.")  # fmt: skip
    rows = pd.Index(given).get_indexer(keys)
    if (rows < 0).any():
        missing = keys.to_numpy()[rows < 0]
        raise HarnessError(f"{source}: column {column!r}: {len(missing)} {what}s of {dataset} have no row (e.g. "
                           f"{missing[0]!r}); expected one row per {what}, {len(keys)} rows.")  # fmt: skip
    return rows


def parse_numbers(frame: pd.DataFrame, column: str, source: str, minimum: float | None = None) -> np.ndarray:
    """Column ``column`` as finite floats, each at least ``minimum`` when one is given."""
    text = frame[column]
    values = pd.to_numeric(text.str.strip(), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise cell_error(frame, source, row, column, f"{text.iat[row]!r} is not a finite number")
    if minimum is not None and (values < minimum).any():
        row = int(np.argmax(values < minimum))
        raise cell_error(frame, source, row, column, f"{text.iat[row]!r} is out of range; expected {column} >= "
                         f"{minimum:g}")  # fmt: skip
    return values


def parse_lists(frame: pd.DataFrame, column: str, names: Mapping[str, int], source: str, what: str,
                limit: int) -> list[np.ndarray]:  # fmt: skip
    """Each cell of ``column`` as a list: its space-separated names mapped through ``names``.

    A list holds at most ``limit`` names, each one a key of ``names`` (``what`` says what they
    are in the messages, e.g. ``"an item of the catalogue of movielens"``), none twice; an empty
    cell is an empty list.
    """
    lists = []
    for row, cell in enumerate(frame[column]):
        listed = cell.split()
        if len(listed) > limit:
            raise cell_error(frame, source, row, column, f"{len(listed)} names; expected at most {limit}")
        unknown = [name for name in listed if name not in names]
        if unknown:
            raise cell_error(frame, source, row, column, f"{unknown[0]!r} is not {what}")
        if len(set(listed)) < len(listed):
            twice = next(name for i, name in enumerate(listed) if name in listed[:i])
            raise cell_error(frame, source, row, column, f"{twice!r} is listed twice")
        lists.append(np.array([names[name] for name in listed], dtype=np.int64))
    return lists


@dataclass
class RankedLists:
    """A submission's ranked lists over a gallery, one per row: what a re-ID or retrieval file states.

    ``distances`` ``[rows, gallery]``: each listed gallery entry's 0-based place in the row's
    list, ``+inf`` for every entry the list leaves out. The metric engine reads it as a distance
    matrix, so its convention applies: entries left out tie at the far end and count against
    the row's matches there, and only the listed order counts.
    """

    distances: np.ndarray

    @classmethod
    def from_lists(cls, lists: Sequence[np.ndarray], n_gallery: int) -> "RankedLists":
        """From each row's gallery positions, nearest first."""
        distances = np.full((len(lists), n_gallery), np.inf, dtype=np.float32)
        for row, listed in enumerate(lists):
            distances[row, listed] = np.arange(len(listed))
        return cls(distances)

    def __len__(self) -> int:
        return len(self.distances)

    def take(self, index: np.ndarray) -> "RankedLists":
        return RankedLists(self.distances[index])


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: ties a submission to the run that wrote it, whatever it is called now."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

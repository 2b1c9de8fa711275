"""Semantic IDs after the RQ-VAE: one unique code tuple per item, its tokens, and the index files.

**Collision resolution** (MQL4GRec's ``index/generate_indices_distance.py``, made complete).
Items that share a full code tuple form a group; the member nearest to its own last-level
codeword keeps the tuple, and every other member, nearest first, takes the free tuple closest
to its own: first its next-nearest last-level codes under the same prefix; when every last-level
code under that prefix is taken, its next-nearest code one level up, with the level below
re-picked nearest first; and so on up to the first level. Counting the tuples taken under each
prefix lets the search skip full subtrees, so it always ends on a free tuple as long as the
catalogue fits the code space (N ≤ K^L). MQL4GRec stops after two passes and two levels, which
can leave collisions; here none remain. Like MQL4GRec, the distances used at every level are
the ones the RQ-VAE measured along the item's original path (a new code at one level would
change the residual below it; the ranking keeps the original one). Ties go to the lower item
index, then the lower code index.

**Tokens.** Level ``l`` of a text code is written ``<a_12>``, ``<b_3>``, ... (letters a, b, c,
...) and of an image code ``<A_12>``, ``<B_3>``, ... as in MQL4GRec, so both vocabularies can
live in one tokenizer.

**Index files.** MQL4GRec's ``<D>.index_lemb.json`` (text) / ``<D>.index_vitemb.json`` (image):
one JSON object ``{"<item>": ["<a_12>", "<b_3>", ...]}`` whose keys are the 0-based item indices
written as decimal strings ("0", "1", ...: the row of the item in ``<D>.emb-*.npy`` and its
number in ``<D>.item2id`` / ``<D>.inter.json``), written with a 4-space indent as MQL4GRec does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_write

__all__ = ["all_code_tokens", "code_tokens", "level_letters", "read_index", "resolve_collisions", "write_index"]


# ---------------------------------------------------------------------------------------------
# Collision resolution
# ---------------------------------------------------------------------------------------------


def resolve_collisions(codes: np.ndarray, distances: Sequence[np.ndarray]) -> tuple[np.ndarray, dict]:
    """Move colliding items to the nearest free code tuples, so every item has its own.

    Items whose tuple is already unique, and the nearest member of each colliding group, keep
    their codes; the search order for the others is described in the module docstring.

    Args:
        codes: ``[N, L]`` integer codes, e.g. ``RQVAE.encode_codes(x)[0]``.
        distances: ``L`` arrays ``[N, K_l]``, each item's distance to every code of level ``l``
            (``RQVAE.encode_codes(x)[1]``); lower is nearer.

    Returns:
        ``(unique_codes, report)``: the ``[N, L]`` int64 codes, and a dict with ``items``,
        ``collided_items`` (items that shared their tuple), ``collision_rate_before``
        (1 − unique tuples / items), ``collision_rate_after`` (0.0), ``items_moved``,
        ``changed_per_level`` (how many moved items got a new code at each level) and
        ``mean_rank_per_level`` (mean rank, 0 = nearest, of those new codes in the item's
        distances at that level; None where no code changed).

    Raises:
        HarnessError: more items than code tuples (N > K_0 · … · K_{L-1}).
    """
    codes, distances = _check_codes_and_distances(codes, distances)
    n_items, n_levels = codes.shape
    sizes = [d.shape[1] for d in distances]
    capacity_below = [math.prod(sizes[level:]) for level in range(n_levels + 1)]  # tuples under a prefix
    if n_items > capacity_below[0]:
        raise HarnessError(
            f"resolve_collisions: {n_items} items cannot each have their own code tuple among the "
            f"{capacity_below[0]} that {n_levels} levels of {sizes} codes allow; use more levels or larger codebooks."
        )

    groups: dict[tuple[int, ...], list[int]] = {}
    for item, row in enumerate(map(tuple, codes.tolist())):
        groups.setdefault(row, []).append(item)
    own_last = distances[-1][np.arange(n_items), codes[:, -1]]
    movers = [item for members in groups.values() if len(members) > 1
              for item in sorted(members, key=lambda i: (own_last[i], i))[1:]]  # fmt: skip

    taken: set[tuple[int, ...]] = set()
    taken_under: dict[tuple[int, ...], int] = {}  # prefix -> full tuples taken below it

    def take(row: tuple[int, ...]) -> None:
        taken.add(row)
        for depth in range(1, n_levels):
            taken_under[row[:depth]] = taken_under.get(row[:depth], 0) + 1

    def is_full(prefix: tuple[int, ...]) -> bool:
        if len(prefix) == n_levels:
            return prefix in taken
        return taken_under.get(prefix, 0) >= capacity_below[len(prefix)]

    for row in groups:
        take(row)
    resolved = codes.copy()
    changed_per_level = [0] * n_levels
    ranks_taken: list[list[int]] = [[] for _ in range(n_levels)]
    for item in movers:
        ranks = [np.argsort(d[item], kind="stable") for d in distances]
        original = tuple(codes[item].tolist())
        new = _nearest_free(original, ranks, is_full)
        take(new)
        resolved[item] = new
        for level in range(n_levels):
            if new[level] != original[level]:
                changed_per_level[level] += 1
                ranks_taken[level].append(int(np.flatnonzero(ranks[level] == new[level])[0]))

    report = {
        "items": n_items,
        "collided_items": sum(len(members) for members in groups.values() if len(members) > 1),
        "collision_rate_before": 1.0 - len(groups) / n_items,
        "collision_rate_after": 1.0 - len(np.unique(resolved, axis=0)) / n_items,
        "items_moved": len(movers),
        "changed_per_level": changed_per_level,
        "mean_rank_per_level": [float(np.mean(r)) if r else None for r in ranks_taken],
    }
    return resolved, report


def _nearest_free(original: tuple[int, ...], ranks: list[np.ndarray], is_full) -> tuple[int, ...]:
    """The first free tuple in the order: change the last level, else the one above and re-pick below, ..."""
    for level in range(len(original) - 1, -1, -1):
        for code in ranks[level].tolist():
            if code == original[level]:
                continue  # that subtree was searched when the levels below were changed
            prefix = original[:level] + (code,)
            if not is_full(prefix):
                return _first_free_below(prefix, ranks, is_full)
    raise AssertionError("unreachable: the capacity check guarantees a free tuple")


def _first_free_below(prefix: tuple[int, ...], ranks: list[np.ndarray], is_full) -> tuple[int, ...]:
    """Complete a prefix that still has room, nearest code first at every level below it."""
    for level in range(len(prefix), len(ranks)):
        prefix = next(prefix + (code,) for code in ranks[level].tolist() if not is_full(prefix + (code,)))
    return prefix


def _check_codes_and_distances(codes, distances) -> tuple[np.ndarray, list[np.ndarray]]:
    codes = np.asarray(codes)
    if codes.ndim != 2 or 0 in codes.shape or not np.issubdtype(codes.dtype, np.integer):
        raise HarnessError(f"codes must be a non-empty 2-D integer array [items, levels], got shape {codes.shape}, "
                           f"dtype {codes.dtype}.")  # fmt: skip
    distances = [np.asarray(d, dtype=np.float64) for d in distances]
    if len(distances) != codes.shape[1]:
        raise HarnessError(f"distances must hold one [items, codes] array per level ({codes.shape[1]}), "
                           f"got {len(distances)}.")  # fmt: skip
    for level, d in enumerate(distances):
        if d.ndim != 2 or d.shape[0] != codes.shape[0]:
            raise HarnessError(f"distances[{level}] must be [{codes.shape[0]}, codes], got shape {d.shape}.")
        low, high = codes[:, level].min(), codes[:, level].max()
        if low < 0 or high >= d.shape[1]:
            raise HarnessError(f"codes at level {level} must lie in 0..{d.shape[1] - 1} (the width of "
                               f"distances[{level}]), got {low}..{high}.")  # fmt: skip
    return codes.astype(np.int64), distances


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"<([A-Za-z])_(0|[1-9][0-9]*)>")


def level_letters(modality: str, num_levels: int) -> str:
    """``"abcd"`` for 4 levels of text codes, ``"ABCD"`` for image codes (one letter per level)."""
    if modality not in ("text", "image"):
        raise HarnessError(f"modality must be 'text' or 'image', got {modality!r}.")
    if not 1 <= num_levels <= 26:
        raise HarnessError(f"num_levels must be in 1..26 (one letter per level), got {num_levels!r}.")
    letters = "abcdefghijklmnopqrstuvwxyz"[:num_levels]
    return letters if modality == "text" else letters.upper()


def code_tokens(codes: np.ndarray, letters: str) -> list[list[str]]:
    """Each item's code tuple as tokens, e.g. ``[12, 3, 7, 200]`` → ``["<a_12>", "<b_3>", "<c_7>", "<d_200>"]``."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(letters):
        raise HarnessError(f"codes must be [items, {len(letters)}] for letters {letters!r}, got shape {codes.shape}.")
    return [[f"<{letter}_{code}>" for letter, code in zip(letters, row)] for row in codes.tolist()]


def all_code_tokens(letters: str, codebook_size: int) -> list[str]:
    """Every token a code can use, level by level: what to add to the tokenizer's vocabulary."""
    return [f"<{letter}_{code}>" for letter in letters for code in range(codebook_size)]


# ---------------------------------------------------------------------------------------------
# Index files
# ---------------------------------------------------------------------------------------------


def write_index(path: str | Path, codes: np.ndarray, letters: str) -> Path:
    """Write ``{"0": ["<a_12>", ...], "1": [...], ...}``, atomically; refuses duplicate tuples."""
    tokens = code_tokens(codes, letters)
    first_owner: dict[tuple[str, ...], int] = {}
    for item, row in enumerate(tokens):
        other = first_owner.setdefault(tuple(row), item)
        if other != item:
            raise HarnessError(f"Cannot write index {str(path)!r}: items {other} and {item} share the code "
                               f"tuple {row}; resolve collisions first.")  # fmt: skip
    payload = {str(item): row for item, row in enumerate(tokens)}
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=4)))


def read_index(path: str | Path, n_items: int, codebook_size: int, letters: str) -> np.ndarray:
    """Read an index file back to codes ``[n_items, len(letters)]``, checking every entry.

    Args:
        path: the ``index_*.json`` file.
        n_items: catalogue size; keys must be exactly ``"0"`` .. ``str(n_items - 1)``.
        codebook_size: codes per level; every code must be below it.
        letters: one letter per level, e.g. ``level_letters("text", 4)`` = ``"abcd"``.

    Raises:
        HarnessError: one line naming the file, the item and what was expected, for a missing or
            non-JSON file, an unknown or missing item, a value that is not ``len(letters)``
            tokens, a token of the wrong form or level, a code outside the codebook, or two
            items with the same tuple.
    """
    where = f"Index file {str(path)!r}"
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{where} does not exist.")
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{where} is not valid JSON ({exc}).") from exc
    if not isinstance(entries, dict):
        raise HarnessError(f"{where} must be a JSON object mapping item indices to code tokens, "
                           f"got {type(entries).__name__}.")  # fmt: skip
    expected_keys = f"item indices '0' to '{n_items - 1}' (0-based, as strings)"
    codes = np.full((n_items, len(letters)), -1, dtype=np.int64)
    owner: dict[tuple[int, ...], str] = {}
    for key, tokens in entries.items():
        if not (key.isdecimal() and str(int(key)) == key and int(key) < n_items):
            raise HarnessError(f"{where} names unknown item {key!r}; expected {expected_keys}.")
        if not (isinstance(tokens, list) and len(tokens) == len(letters) and all(isinstance(t, str) for t in tokens)):
            example = [f"<{letter}_0>" for letter in letters]
            raise HarnessError(f"{where}, item {key!r}: expected a list of {len(letters)} code tokens like "
                               f"{example}, got {_short(tokens)}.")  # fmt: skip
        for level, (letter, token) in enumerate(zip(letters, tokens)):
            match = _TOKEN.fullmatch(token)
            if match is None or match.group(1) != letter:
                raise HarnessError(f"{where}, item {key!r}: token {level + 1} is {token!r}, expected the form "
                                   f"'<{letter}_N>'.")  # fmt: skip
            code = int(match.group(2))
            if code >= codebook_size:
                raise HarnessError(f"{where}, item {key!r}: token {token!r} is outside the codebook "
                                   f"(codes 0 to {codebook_size - 1}).")  # fmt: skip
            codes[int(key), level] = code
        other = owner.setdefault(tuple(codes[int(key)].tolist()), key)
        if other != key:
            raise HarnessError(f"{where}: items {other!r} and {key!r} share the code tuple {tokens}; "
                               f"every item needs its own.")  # fmt: skip
    missing = np.flatnonzero(codes[:, 0] < 0)
    if len(missing):
        raise HarnessError(f"{where} has no codes for item '{missing[0]}' ({len(missing)} of {n_items} items "
                           f"missing); expected {expected_keys}.")  # fmt: skip
    return codes


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

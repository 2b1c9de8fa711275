"""The single metric engine of the harness.

Every score reported by the harness is computed here, so that cross-validation,
leaderboards and model cards cannot disagree about a definition.

Four task families:

* regression -- :func:`mean_squared_error`, :func:`mean_squared_log_error`,
  :func:`root_mean_squared_log_error`;
* classification -- :func:`accuracy`, :func:`top_k_accuracy`, :func:`log_loss`;
* ranking (sequential recommendation, leave-one-out) -- everything goes through
  the 0-based rank of the positive item (:func:`target_ranks`,
  :func:`batched_target_ranks`, :func:`ranks_from_topn`,
  :func:`sampled_target_ranks`), then :func:`hit_at_k`, :func:`recall_at_k`,
  :func:`ndcg_at_k`, :func:`mrr_at_k`, :func:`ranking_report`;
* re-identification -- :func:`reid_metrics`, :func:`reid_from_distances`
  (torchreid's ``eval_market1501`` protocol, plus mINP).

Metric names (:func:`get_metric`): ``mse``, ``msle``, ``rmsle``, ``accuracy``,
``top{K}_accuracy`` (e.g. ``top5_accuracy``), ``log_loss``, ``hit@K``,
``recall@K``, ``ndcg@K``, ``mrr@K`` (ranking names may end in ``_full`` or
``_sampled`` to name the evaluation protocol, e.g. ``ndcg@10_full``; the
suffix is kept in :attr:`Metric.name` and does not change the computation),
``map``, ``minp``, ``rank{K}`` and its alias ``cmc@K`` (re-ID).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "TASKS",
    "UNRANKED",
    "Metric",
    "get_metric",
    "list_metrics",
    "score",
    "mean_squared_error",
    "mean_squared_log_error",
    "root_mean_squared_log_error",
    "accuracy",
    "top_k_accuracy",
    "log_loss",
    "target_ranks",
    "batched_target_ranks",
    "ranks_from_topn",
    "sample_negatives",
    "sampled_target_ranks",
    "hit_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "ranking_report",
    "reid_from_distances",
    "reid_metrics",
]

TASKS = ("regression", "classification", "ranking", "reid")

#: Rank given by :func:`ranks_from_topn` to a target absent from its top-N list.
#: It is larger than any ``k``, so the row counts as a miss for every metric@k.
UNRANKED = int(np.iinfo(np.int64).max)

_PROTOCOLS = ("full", "sampled")


# ----------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__} ({exc})") from None


def _numeric(x: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """``x`` as a finite float64 array of the given number of dimensions."""
    arr = _to_numpy(x, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _labels(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty, got shape {arr.shape}")
    return arr


def _class_indices(x: Any, name: str, n_classes: int) -> np.ndarray:
    arr = _labels(x, name)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ValueError(
            f"{name} must hold class indices in [0, {n_classes}), "
            f"got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )


def _positive_int(k: Any, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return int(k)


def _score_tensor(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """A 2-D real tensor without NaN (a NaN target score would rank first)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(_to_numpy(x, name))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, n_items], got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device)
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def _index_tensor(x: Any, name: str, length: int, upper: int, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(_to_numpy(x, name))
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold integer item ids, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.int64)
    if length and (t.min() < 0 or t.max() >= upper):
        raise ValueError(
            f"{name} must hold item ids in [0, {upper}), got values in [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _is_ragged(history: Any) -> bool:
    return isinstance(history, (list, tuple))


def _ragged_pairs(history: Sequence[Any], name: str, n_rows: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of a list of ``n_rows`` 1-D item-id arrays."""
    if len(history) != n_rows:
        raise ValueError(f"{name} must hold one index array per row ({n_rows}), got {len(history)}")
    parts = [_to_numpy(h, name).reshape(-1) for h in history]
    lengths = [p.shape[0] for p in parts]
    nonempty = [p for p in parts if p.size]
    for p in nonempty:
        if p.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer item ids, got dtype {p.dtype}")
    cols = np.concatenate(nonempty).astype(np.int64) if nonempty else np.zeros(0, np.int64)
    if cols.size and (cols.min() < 0 or cols.max() >= n_items):
        raise ValueError(f"{name} must hold item ids in [0, {n_items}), got values in [{cols.min()}, {cols.max()}]")
    return np.repeat(np.arange(n_rows, dtype=np.int64), lengths), cols


def _history_mask(history: Any, name: str, n_rows: int, n_items: int, device: torch.device) -> torch.Tensor | None:
    """``history`` as a bool ``[n_rows, n_items]`` tensor.

    ``history`` is either such a mask or a list of ``n_rows`` 1-D arrays of
    item ids (the memory-friendly form for large catalogues).
    """
    if history is None:
        return None
    if _is_ragged(history):
        rows, cols = _ragged_pairs(history, name, n_rows, n_items)
        mask = torch.zeros((n_rows, n_items), dtype=torch.bool, device=device)
        mask[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = True
        return mask
    mask = history if isinstance(history, torch.Tensor) else torch.as_tensor(_to_numpy(history, name))
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool mask or a list of index arrays, got dtype {mask.dtype}")
    if tuple(mask.shape) != (n_rows, n_items):
        raise ValueError(f"{name} must have shape ({n_rows}, {n_items}), got {tuple(mask.shape)}")
    return mask.to(device)


def _ranks_arg(ranks: Any) -> np.ndarray:
    arr = _to_numpy(ranks, "ranks")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ranks must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {arr.shape}")
    if arr.min() < 0:
        raise ValueError(f"ranks must be >= 0 (0-based), got min {arr.min()}")
    return arr.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------


def _regression_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _numeric(y_true, "y_true", 1)
    p = _numeric(y_pred, "y_pred", 1)
    _same_length(t, p, "y_true", "y_pred")
    return t, p


def mean_squared_error(y_true: Any, y_pred: Any) -> float:
    r"""Mean squared error.

    .. math:: \mathrm{MSE} = \frac{1}{N}\sum_i (y_i - \hat y_i)^2
    """
    t, p = _regression_pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mean_squared_log_error(y_true: Any, y_pred: Any, *, clip_negative: bool = False) -> float:
    r"""Mean squared logarithmic error: relative errors count, not absolute ones.

    .. math:: \mathrm{MSLE} = \frac{1}{N}\sum_i \big(\log(1+y_i) - \log(1+\hat y_i)\big)^2

    Negative values make ``log1p`` meaningless, so they raise unless
    ``clip_negative=True``, which clips both arrays to 0 first.
    """
    t, p = _regression_pair(y_true, y_pred)
    if clip_negative:
        t, p = np.clip(t, 0.0, None), np.clip(p, 0.0, None)
    else:
        for name, arr in (("y_true", t), ("y_pred", p)):
            if arr.min() < 0:
                raise ValueError(
                    "Mean Squared Logarithmic Error cannot be used when "
                    f"{name} contains negative values (min {arr.min():g}); "
                    "pass clip_negative=True to clip them to 0."
                )
    return mean_squared_error(np.log1p(t), np.log1p(p))


def root_mean_squared_log_error(y_true: Any, y_pred: Any, *, clip_negative: bool = False) -> float:
    r"""Root of :func:`mean_squared_log_error`.

    .. math:: \mathrm{RMSLE} = \sqrt{\mathrm{MSLE}}
    """
    return math.sqrt(mean_squared_log_error(y_true, y_pred, clip_negative=clip_negative))


# ----------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------


def accuracy(y_true: Any, y_pred: Any) -> float:
    r"""Fraction of rows whose predicted label equals the true label.

    ``y_pred`` holds labels ``[N]`` or class scores ``[N, C]``; scores are
    turned into labels by ``argmax`` (ties go to the lowest class index, the
    numpy / torch convention; :func:`top_k_accuracy` with ``k=1`` follows
    scikit-learn instead and can differ on exact ties).

    .. math:: \mathrm{acc} = \frac{1}{N}\sum_i [\hat y_i = y_i]
    """
    pred = _to_numpy(y_pred, "y_pred")
    if pred.ndim == 2:
        proba = _numeric(pred, "y_pred", 2)
        true = _class_indices(y_true, "y_true", proba.shape[1])
        pred = proba.argmax(axis=1)
    else:
        pred = _labels(pred, "y_pred")
        true = _labels(y_true, "y_true")
    _same_length(true, pred, "y_true", "y_pred")
    return float(np.mean(true == pred))


def top_k_accuracy(y_true: Any, y_score: Any, k: int) -> float:
    r"""Fraction of rows whose true class is among the ``k`` highest scores.

    Ties follow ``sklearn.metrics.top_k_accuracy_score`` (multiclass): among
    equal scores the higher class index ranks first. Class ``y`` is a hit when

    .. math:: \#\{c : s_c > s_y\} + \#\{c > y : s_c = s_y\} < k
    """
    k = _positive_int(k, "k")
    s = _numeric(y_score, "y_score", 2)
    true = _class_indices(y_true, "y_true", s.shape[1])
    _same_length(true, s, "y_true", "y_score")
    s_true = s[np.arange(true.shape[0]), true][:, None]
    above = s > s_true
    tied_after = (s == s_true) & (np.arange(s.shape[1])[None, :] > true[:, None])
    return float(np.mean((above | tied_after).sum(axis=1) < k))


def log_loss(y_true: Any, y_proba: Any) -> float:
    r"""Cross-entropy of the predicted class probabilities (natural log).

    Probabilities are clipped to :math:`[\epsilon, 1-\epsilon]` (float64
    machine epsilon, as scikit-learn) so one confident mistake costs a large
    but finite amount. Rows must sum to 1 within :math:`\sqrt{\epsilon}` of
    the input dtype.

    .. math:: \mathrm{LL} = -\frac{1}{N}\sum_i \log p_{i, y_i}
    """
    raw = _to_numpy(y_proba, "y_proba")
    proba = _numeric(raw, "y_proba", 2)
    true = _class_indices(y_true, "y_true", proba.shape[1])
    _same_length(true, proba, "y_true", "y_proba")
    if proba.min() < 0 or proba.max() > 1:
        raise ValueError(
            f"y_proba must hold probabilities in [0, 1], got values in [{proba.min():g}, {proba.max():g}]"
        )
    in_eps = np.finfo(raw.dtype if raw.dtype.kind == "f" else np.float64).eps
    sums = proba.sum(axis=1)
    bad = np.abs(sums - 1.0) > math.sqrt(in_eps)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"y_proba rows must sum to 1, got row {row} summing to {sums[row]:g}")
    eps = np.finfo(np.float64).eps
    p = np.clip(proba[np.arange(true.shape[0]), true], eps, 1 - eps)
    return float(-np.mean(np.log(p)))


# ----------------------------------------------------------------------------
# Ranking: ranks of the positive item
# ----------------------------------------------------------------------------


def _ranks(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Pessimistic 0-based rank: items scoring >= the target, target excluded."""
    at_least = scores >= scores.gather(1, targets[:, None])
    if mask is not None:
        at_least &= ~mask
        at_least.scatter_(1, targets[:, None], True)
    return at_least.sum(dim=1) - 1


def target_ranks(scores: Any, targets: Any, history_mask: Any = None) -> np.ndarray:
    r"""0-based rank of each row's positive item among all candidate items.

    ``scores`` is ``[B, n_items]`` (numpy or torch, any device), ``targets``
    ``[B]`` item ids (leave-one-out: one positive per row). ``history_mask`` --
    a bool ``[B, n_items]`` mask or a list of ``B`` 1-D arrays of item ids --
    names items the user already interacted with; they are excluded from the
    candidates (the target itself never is, even if listed).

    .. math:: r_i = \#\{j \ne t_i,\ j \notin H_i : s_{ij} > s_{it_i}\}
                  + \#\{j \ne t_i,\ j \notin H_i : s_{ij} = s_{it_i}\}

    Ties count against the target (pessimistic), so a constant-score model
    ranks every target last instead of first. RecBole ranks with
    ``torch.topk``, whose order among ties is unspecified; the two agree
    whenever scores are tie-free. NaN scores raise ``ValueError``.
    """
    s = _score_tensor(scores, "scores")
    b, n_items = s.shape
    t = _index_tensor(targets, "targets", b, n_items, s.device)
    mask = _history_mask(history_mask, "history_mask", b, n_items, s.device)
    return _ranks(s, t, mask).cpu().numpy()


def batched_target_ranks(
    score_fn: Callable[[Any], Any],
    rows: Any,
    targets: Any,
    history: Any = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """:func:`target_ranks` over row batches, so the full score matrix never exists.

    ``score_fn(rows[i:i + batch_size])`` must return ``[b, n_items]`` scores
    (numpy or torch). ``history`` is a bool ``[len(rows), n_items]`` mask or a
    list of index arrays (prefer the list for large catalogues). Ranks are
    computed on ``device`` if given, else where ``score_fn`` left the scores;
    ``score_fn`` runs under ``torch.no_grad()``.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    n_rows = len(rows)
    if n_rows == 0:
        raise ValueError("rows is empty")
    targets_np = _to_numpy(targets, "targets")
    if targets_np.ndim != 1 or targets_np.shape[0] != n_rows:
        raise ValueError(f"targets must have shape ({n_rows},), got {targets_np.shape}")
    if history is not None and len(history) != n_rows:
        raise ValueError(f"history must have {n_rows} rows (one per row of rows), got {len(history)}")
    n_items = None
    out = []
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            stop = min(start + batch_size, n_rows)
            s = _score_tensor(score_fn(rows[start:stop]), "score_fn output", device)
            if s.shape[0] != stop - start or (n_items is not None and s.shape[1] != n_items):
                want = f"({stop - start}, {n_items if n_items is not None else 'n_items'})"
                raise ValueError(f"score_fn output must have shape {want}, got {tuple(s.shape)}")
            n_items = s.shape[1]
            t = _index_tensor(targets_np[start:stop], "targets", stop - start, n_items, s.device)
            h = None if history is None else history[start:stop]
            mask = _history_mask(h, "history", stop - start, n_items, s.device)
            out.append(_ranks(s, t, mask).cpu().numpy())
    return np.concatenate(out)


def ranks_from_topn(topn_items: Any, targets: Any) -> np.ndarray:
    """0-based rank of each target inside a submitted top-N item list.

    This scores the recommendation submission format (``[B, N]`` item ids,
    best first). The rank is the position of the first occurrence of the
    target; a target absent from its list gets :data:`UNRANKED`, which is a
    miss for every metric@k (so lists shorter than ``k`` are not rewarded).
    """
    top = _to_numpy(topn_items, "topn_items")
    if top.dtype.kind not in "iu":
        raise TypeError(f"topn_items must hold integer item ids, got dtype {top.dtype}")
    if top.ndim != 2:
        raise ValueError(f"topn_items must be 2-D [B, N], got shape {top.shape}")
    t = _to_numpy(targets, "targets")
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets must hold integer item ids, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != top.shape[0]:
        raise ValueError(f"targets must have shape ({top.shape[0]},), got {t.shape}")
    found = top == t[:, None]
    return np.where(found.any(axis=1), found.argmax(axis=1), UNRANKED).astype(np.int64)


# ----------------------------------------------------------------------------
# Ranking: sampled evaluation
# ----------------------------------------------------------------------------


def sample_negatives(
    targets: Any,
    n_items: int,
    history: Any = None,
    *,
    n_negatives: int = 100,
    sampling: str = "uniform",
    item_popularity: Any = None,
    seed: int = 0,
) -> np.ndarray:
    r"""``[B, n_negatives]`` negative items per row, reproducible from ``seed``.

    Negatives are never the row's target nor in its ``history`` (bool mask or
    list of index arrays). ``sampling="uniform"`` draws every allowed item with
    equal probability; ``"popularity"`` draws item :math:`j` with probability
    :math:`\propto` ``item_popularity[j]`` (harder negatives). As in RecBole's
    sampler and SASRec's evaluation, each negative is an independent draw
    rejected and redrawn while it hits the target or the history, so a row may
    repeat a negative. Draws come from ``numpy.random.default_rng(seed)``: the
    result depends only on the arguments.
    """
    n_items = _positive_int(n_items, "n_items")
    n_neg = _positive_int(n_negatives, "n_negatives")
    t = _to_numpy(targets, "targets")
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets must hold integer item ids, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(f"targets must be a non-empty 1-D array, got shape {t.shape}")
    if t.min() < 0 or t.max() >= n_items:
        raise ValueError(f"targets must hold item ids in [0, {n_items}), got values in [{t.min()}, {t.max()}]")
    b = t.shape[0]
    if sampling == "uniform":
        if item_popularity is not None:
            raise ValueError("item_popularity is only used with sampling='popularity'")
        p = None
    elif sampling == "popularity":
        if item_popularity is None:
            raise ValueError("sampling='popularity' needs item_popularity (one count per item)")
        pop = _numeric(item_popularity, "item_popularity", 1)
        if pop.shape[0] != n_items or pop.min() < 0 or pop.sum() <= 0:
            raise ValueError(
                f"item_popularity must be {n_items} non-negative values with a positive sum, "
                f"got shape {pop.shape}, min {pop.min():g}, sum {pop.sum():g}"
            )
        p = pop / pop.sum()
    else:
        raise ValueError(f"sampling must be 'uniform' or 'popularity', got {sampling!r}")

    # Excluded (row, item) pairs as sorted keys row * n_items + item.
    keys = [np.arange(b, dtype=np.int64) * n_items + t.astype(np.int64)]
    if history is not None:
        if _is_ragged(history):
            r, c = _ragged_pairs(history, "history", b, n_items)
        else:
            r, c = np.nonzero(_history_mask(history, "history", b, n_items, torch.device("cpu")).numpy())
        keys.append(r.astype(np.int64) * n_items + c)
    excluded = np.unique(np.concatenate(keys))

    ex_rows, ex_items = np.divmod(excluded, n_items)
    drawable = n_items if p is None else int((p > 0).sum())
    blocked = np.ones(ex_items.shape[0]) if p is None else (p[ex_items] > 0).astype(np.float64)
    available = drawable - np.bincount(ex_rows, weights=blocked, minlength=b)
    if available.min() < 1:
        row = int(np.argmin(available))
        raise ValueError(
            f"history row {row} leaves no item to sample as a negative "
            "(all items are the target, in the history or have zero popularity)"
        )

    rng = np.random.default_rng(seed)
    out = np.empty(b * n_neg, dtype=np.int64)
    row_of = np.repeat(np.arange(b, dtype=np.int64), n_neg)
    pending = np.arange(b * n_neg)
    while pending.size:
        cand = rng.integers(0, n_items, size=pending.size) if p is None else rng.choice(n_items, pending.size, p=p)
        out[pending] = cand
        pending = pending[np.isin(row_of[pending] * n_items + cand, excluded)]
    return out.reshape(b, n_neg)


def sampled_target_ranks(
    scores: Any,
    targets: Any,
    history: Any = None,
    *,
    n_negatives: int = 100,
    sampling: str = "uniform",
    item_popularity: Any = None,
    seed: int = 0,
    n_items: int | None = None,
) -> np.ndarray:
    r"""0-based rank of the positive among itself and ``n_negatives`` sampled negatives.

    ``scores`` is a full ``[B, n_items]`` score matrix, or a callable
    ``score_fn(candidates) -> [B, 1 + n_negatives]`` that scores only the
    candidate items (``candidates[:, 0]`` is the target, the rest come from
    :func:`sample_negatives`); the callable form needs ``n_items``. Ties count
    against the target, as in :func:`target_ranks`:

    .. math:: r_i = \#\{j \in N_i : s_{ij} \ge s_{it_i}\}
    """
    t = _to_numpy(targets, "targets")
    if callable(scores):
        if n_items is None:
            raise ValueError("n_items is required when scores is a callable")
        negatives = sample_negatives(
            t, n_items, history, n_negatives=n_negatives, sampling=sampling,
            item_popularity=item_popularity, seed=seed,
        )
        candidates = np.concatenate([t.astype(np.int64)[:, None], negatives], axis=1)
        with torch.no_grad():
            cand_scores = _score_tensor(scores(candidates), "score_fn output")
        if tuple(cand_scores.shape) != candidates.shape:
            raise ValueError(f"score_fn output must have shape {candidates.shape}, got {tuple(cand_scores.shape)}")
    else:
        s = _score_tensor(scores, "scores")
        if n_items is not None and n_items != s.shape[1]:
            raise ValueError(f"n_items must match scores.shape[1] ({s.shape[1]}), got {n_items}")
        tt = _index_tensor(t, "targets", s.shape[0], s.shape[1], s.device)
        negatives = sample_negatives(
            t, s.shape[1], history, n_negatives=n_negatives, sampling=sampling,
            item_popularity=item_popularity, seed=seed,
        )
        candidates = torch.cat([tt[:, None], torch.as_tensor(negatives, device=s.device)], dim=1)
        cand_scores = s.gather(1, candidates)
    return (cand_scores[:, 1:] >= cand_scores[:, :1]).sum(dim=1).cpu().numpy()


# ----------------------------------------------------------------------------
# Ranking: metrics from ranks
# ----------------------------------------------------------------------------


def _reduce(values: np.ndarray, per_row: bool) -> float | np.ndarray:
    return values if per_row else float(values.mean())


def hit_at_k(ranks: Any, k: int, *, per_row: bool = False) -> float | np.ndarray:
    r"""Hit ratio: was the positive ranked in the top ``k``?

    .. math:: \mathrm{HR@}k = \frac{1}{B}\sum_i [r_i < k]
    """
    r, k = _ranks_arg(ranks), _positive_int(k, "k")
    return _reduce((r < k).astype(np.float64), per_row)


def recall_at_k(ranks: Any, k: int, *, per_row: bool = False) -> float | np.ndarray:
    r"""Recall: share of the row's positives in the top ``k``.

    With one positive per row (leave-one-out) it equals :func:`hit_at_k`.

    .. math:: \mathrm{Recall@}k = \frac{1}{B}\sum_i \frac{[r_i < k]}{1}
    """
    return hit_at_k(ranks, k, per_row=per_row)


def ndcg_at_k(ranks: Any, k: int, *, per_row: bool = False) -> float | np.ndarray:
    r"""Normalised discounted cumulative gain, rewarding positives ranked near the top.

    With one positive the ideal DCG is 1 (RecBole's definition):

    .. math:: \mathrm{NDCG@}k = \frac{1}{B}\sum_i \frac{[r_i < k]}{\log_2(r_i + 2)}
    """
    r, k = _ranks_arg(ranks), _positive_int(k, "k")
    hit = r < k
    return _reduce(np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2.0), 0.0), per_row)


def mrr_at_k(ranks: Any, k: int, *, per_row: bool = False) -> float | np.ndarray:
    r"""Mean reciprocal rank, truncated at ``k``.

    .. math:: \mathrm{MRR@}k = \frac{1}{B}\sum_i \frac{[r_i < k]}{r_i + 1}
    """
    r, k = _ranks_arg(ranks), _positive_int(k, "k")
    hit = r < k
    return _reduce(np.where(hit, 1.0 / (np.where(hit, r, 0) + 1.0), 0.0), per_row)


_RANKING_FNS: dict[str, Callable[..., Any]] = {
    "hit": hit_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
}


def ranking_report(ranks: Any, ks: Sequence[int] = (5, 10, 20), protocol: str = "full") -> dict[str, float]:
    """All ranking metrics at every ``k``, keyed ``"{metric}@{k}_{protocol}"``.

    ``protocol`` ("full" or "sampled") names how the ranks were obtained so that
    full-ranking and sampled numbers can never be confused in a report.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
    r = _ranks_arg(ranks)
    ks = [_positive_int(k, "ks entry") for k in ks]
    if not ks:
        raise ValueError("ks is empty")
    return {f"{name}@{k}_{protocol}": fn(r, k) for k in ks for name, fn in _RANKING_FNS.items()}


# ----------------------------------------------------------------------------
# Re-identification
# ----------------------------------------------------------------------------


class _ReidAccumulator:
    """Per-query CMC hits, AP and INP collected over query batches.

    Per-query values are kept (one float each) so the means do not depend on
    the batch size.
    """

    def __init__(self, max_rank: int) -> None:
        self.max_rank = max_rank
        self.first_hits = np.zeros(max_rank, dtype=np.int64)
        self.ap: list[np.ndarray] = []
        self.inp: list[np.ndarray] = []
        self.n_valid = 0
        self.n_skipped = 0

    def add(self, dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor,
            g_pids: torch.Tensor, g_cams: torch.Tensor) -> None:
        order = torch.sort(dist, dim=1, stable=True).indices
        match = g_pids[order] == q_pids[:, None]
        keep = ~(match & (g_cams[order] == q_cams[:, None]))
        good = match & keep
        n_good = good.sum(dim=1)
        valid = n_good > 0
        pos = keep.cumsum(dim=1) - 1  # position among kept gallery entries
        precision = good.cumsum(dim=1).double() / (pos + 1).clamp(min=1).double()  # junk before 1st kept: pos -1
        ap = (precision * good).sum(dim=1) / n_good.clamp(min=1)
        first = torch.where(good, pos, torch.full_like(pos, self.max_rank)).min(dim=1).values
        last = torch.where(good, pos, torch.full_like(pos, -1)).max(dim=1).values
        inp = n_good.double() / (last + 1).double()
        self.first_hits += np.bincount(
            first[valid].clamp(max=self.max_rank).cpu().numpy(), minlength=self.max_rank + 1
        )[: self.max_rank]
        self.ap.append(ap[valid].cpu().numpy())
        self.inp.append(inp[valid].cpu().numpy())
        n_valid = int(valid.sum())
        self.n_valid += n_valid
        self.n_skipped += int(valid.numel()) - n_valid

    def result(self) -> dict[str, Any]:
        total = self.n_valid + self.n_skipped
        if self.n_valid == 0:
            raise ValueError(
                f"no query has a valid gallery match (same id, different camera); all {total} would be skipped"
            )
        if self.n_skipped:
            warnings.warn(
                f"{self.n_skipped} of {total} queries have no valid gallery match "
                "(same id, different camera) and were skipped",
                stacklevel=3,
            )
        return {
            "cmc": np.cumsum(self.first_hits) / self.n_valid,
            "map": float(np.concatenate(self.ap).mean()),
            "minp": float(np.concatenate(self.inp).mean()),
            "n_queries": self.n_valid,
            "n_skipped": self.n_skipped,
        }


def _id_tensor(x: Any, name: str, length: int | None, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(_to_numpy(x, name))
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {t.dtype}")
    if t.ndim != 1 or (length is not None and t.shape[0] != length):
        want = f"({length},)" if length is not None else "1-D"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)


def reid_from_distances(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
) -> dict[str, Any]:
    r"""Market-1501 evaluation of a query x gallery distance matrix (torchreid's signature).

    For each query, gallery entries with the same id *and* the same camera are
    removed (they are trivially easy); a query with no remaining match is
    skipped, counted in ``n_skipped`` and reported by one ``warnings.warn``.
    Gallery order is a stable ascending sort of distances, so equal distances
    keep gallery order (torchreid's ``np.argsort`` leaves it unspecified).
    With :math:`p_1 < \dots < p_m` the 0-based positions of the query's ``m``
    matches in the filtered list:

    .. math::
        \mathrm{CMC}(r) = \Pr[p_1 < r], \quad
        \mathrm{AP} = \frac{1}{m}\sum_{j=1}^m \frac{j}{p_j + 1}, \quad
        \mathrm{INP} = \frac{m}{p_m + 1}

    AP and INP (mINP, Ye et al. AGW) are averaged over evaluated queries.
    Returns ``{"cmc": array[max_rank], "map", "minp", "n_queries" (evaluated),
    "n_skipped"}``; ``cmc[r-1]`` saturates at 1 beyond the gallery size.
    """
    max_rank = _positive_int(max_rank, "max_rank")
    d = _score_tensor(distmat, "distmat")
    n_q, n_g = d.shape
    acc = _ReidAccumulator(max_rank)
    qp = _id_tensor(q_pids, "q_pids", n_q, d.device)
    qc = _id_tensor(q_camids, "q_camids", n_q, d.device)
    gp = _id_tensor(g_pids, "g_pids", n_g, d.device)
    gc = _id_tensor(g_camids, "g_camids", n_g, d.device)
    for start in range(0, n_q, 512):
        sl = slice(start, start + 512)
        acc.add(d[sl], qp[sl], qc[sl], gp, gc)
    return acc.result()


def _features(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(_to_numpy(x, name))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be 2-D [n, dim] with n >= 1, got shape {tuple(t.shape)}")
    t = t.to(device=device if device is not None else t.device)
    t = t if t.dtype == torch.float64 else t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def reid_metrics(
    query_features: Any,
    query_ids: Any,
    query_cams: Any,
    gallery_features: Any,
    gallery_ids: Any,
    gallery_cams: Any,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    metric: str = "euclidean",
    batch_size: int = 512,
) -> dict[str, float | int]:
    r"""Re-ID metrics from features, with distances computed one query batch at a time.

    ``metric="euclidean"`` ranks by squared Euclidean distance
    :math:`\lVert q\rVert^2 + \lVert g\rVert^2 - 2 q^\top g` (same order as
    Euclidean); ``"cosine"`` by :math:`1 - \hat q^\top \hat g`. Work happens on
    the device of ``query_features``. Protocol and ties: see
    :func:`reid_from_distances`. Returns ``{"map", "rank{r}" for r in ranks,
    "minp", "n_queries", "n_skipped"}``.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    batch_size = _positive_int(batch_size, "batch_size")
    ranks = [_positive_int(r, "ranks entry") for r in ranks]
    if not ranks:
        raise ValueError("ranks is empty")
    qf = _features(query_features, "query_features")
    gf = _features(gallery_features, "gallery_features", qf.device).to(qf.dtype)
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"query_features and gallery_features must have the same dim, got {qf.shape[1]} and {gf.shape[1]}"
        )
    qp = _id_tensor(query_ids, "query_ids", qf.shape[0], qf.device)
    qc = _id_tensor(query_cams, "query_cams", qf.shape[0], qf.device)
    gp = _id_tensor(gallery_ids, "gallery_ids", gf.shape[0], qf.device)
    gc = _id_tensor(gallery_cams, "gallery_cams", gf.shape[0], qf.device)
    if metric == "cosine":
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    g_sq = (gf * gf).sum(dim=1)
    acc = _ReidAccumulator(max(ranks))
    with torch.no_grad():
        for start in range(0, qf.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            sim = qf[sl] @ gf.T
            if metric == "cosine":
                dist = 1.0 - sim
            else:
                dist = ((qf[sl] * qf[sl]).sum(dim=1)[:, None] + g_sq[None, :] - 2.0 * sim).clamp_(min=0.0)
            acc.add(dist, qp[sl], qc[sl], gp, gc)
    res = acc.result()
    out: dict[str, float | int] = {"map": res["map"]}
    out.update({f"rank{r}": float(res["cmc"][r - 1]) for r in ranks})
    out.update({k: res[k] for k in ("minp", "n_queries", "n_skipped")})
    return out


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A named metric with its optimisation direction, declared once.

    ``fn`` takes ``(y_true, y_pred)`` for regression / classification, the
    rank array for ranking, and the dict from :func:`reid_metrics` for re-ID.
    """

    name: str
    task: str
    greater_is_better: bool
    fn: Callable[..., float] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    @property
    def worst(self) -> float:
        """The value every real score beats: ``-inf`` or ``inf``."""
        return -math.inf if self.greater_is_better else math.inf

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is strictly better than score ``b``."""
        return a > b if self.greater_is_better else a < b

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return self.fn(*args, **kwargs)


def _reid_getter(key: str) -> Callable[[Mapping[str, Any]], float]:
    def get(results: Mapping[str, Any]) -> float:
        if key not in results:
            raise ValueError(f"re-ID results have no {key!r}; include it in reid_metrics(ranks=...)")
        return float(results[key])

    return get


@dataclass(frozen=True)
class _Family:
    spelling: str
    pattern: str
    task: str
    greater_is_better: bool
    build: Callable[[re.Match], Callable[..., float]]


_K = r"(?P<k>[1-9][0-9]*)"
_SUFFIX = r"(?:_full|_sampled)?"


def _ranking_family(metric: str) -> _Family:
    fn = _RANKING_FNS[metric]
    return _Family(f"{metric}@K", rf"{metric}@{_K}{_SUFFIX}", "ranking", True,
                   lambda m: partial(fn, k=int(m["k"])))


_FAMILIES: tuple[_Family, ...] = (
    _Family("mse", "mse", "regression", False, lambda m: mean_squared_error),
    _Family("msle", "msle", "regression", False, lambda m: mean_squared_log_error),
    _Family("rmsle", "rmsle", "regression", False, lambda m: root_mean_squared_log_error),
    _Family("accuracy", "accuracy", "classification", True, lambda m: accuracy),
    _Family("topK_accuracy", rf"top{_K}_accuracy", "classification", True,
            lambda m: partial(top_k_accuracy, k=int(m["k"]))),
    _Family("log_loss", "log_loss", "classification", False, lambda m: log_loss),
    *(_ranking_family(name) for name in _RANKING_FNS),
    _Family("map", "map", "reid", True, lambda m: _reid_getter("map")),
    _Family("minp", "minp", "reid", True, lambda m: _reid_getter("minp")),
    _Family("rankK", rf"rank{_K}", "reid", True, lambda m: _reid_getter(f"rank{m['k']}")),
    _Family("cmc@K", rf"cmc@{_K}", "reid", True, lambda m: _reid_getter(f"rank{m['k']}")),
)


def list_metrics(task: str | None = None) -> list[str]:
    """Metric families, optionally of one task; ``K`` stands for a positive int."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    return [f.spelling for f in _FAMILIES if task is None or f.task == task]


def get_metric(name: str) -> Metric:
    """Parse a metric name (see the module docstring) into a :class:`Metric`."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, got {type(name).__name__}")
    for fam in _FAMILIES:
        m = re.fullmatch(fam.pattern, name)
        if m:
            return Metric(name, fam.task, fam.greater_is_better, fam.build(m))
    raise ValueError(
        f"Unknown metric {name!r}, valid metrics: {', '.join(list_metrics())} "
        "(K is a positive int; ranking metrics take @K and an optional _full/_sampled suffix, e.g. ndcg@10)"
    )


def score(metric_name: str, y_true: Any, y_pred: Any, **kwargs: Any) -> float:
    """Score row-wise predictions with a regression or classification metric by name.

    Ranking and re-ID metrics need more than two arrays; use
    :func:`target_ranks` / :func:`ranking_report` and :func:`reid_metrics`.
    """
    metric = get_metric(metric_name)
    if metric.task not in ("regression", "classification"):
        raise ValueError(
            f"score() handles regression and classification metrics; {metric_name!r} is a {metric.task} "
            "metric (use ranking_report / reid_metrics)"
        )
    return metric.fn(y_true, y_pred, **kwargs)

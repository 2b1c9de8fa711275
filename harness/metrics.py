"""The single metric engine of the harness.

Every score reported by the harness is computed here, so that cross-validation,
leaderboards and model cards cannot disagree about a definition.

Four task families:

* regression -- :func:`mean_squared_error`, :func:`mean_squared_log_error`,
  :func:`root_mean_squared_log_error`;
* classification -- :func:`accuracy`, :func:`top_k_accuracy`, :func:`log_loss`, :func:`macro_f1`;
* ranking (sequential recommendation, leave-one-out) -- everything goes through
  the 0-based rank of the positive item (:func:`target_ranks`,
  :func:`batched_target_ranks`, :func:`ranks_from_topn`,
  :func:`sampled_target_ranks`), then :func:`hit_at_k`, :func:`recall_at_k`,
  :func:`ndcg_at_k`, :func:`mrr_at_k`, :func:`ranking_report`;
* re-identification and retrieval -- :func:`reid_metrics`, :func:`reid_from_distances`,
  and the query × gallery engine under both, :func:`query_gallery_metrics`
  (torchreid's ``eval_market1501`` protocol, plus mINP).

Metric names (:func:`get_metric`): ``mse``, ``msle``, ``rmsle``, ``accuracy``,
``top{K}_accuracy`` (e.g. ``top5_accuracy``), ``log_loss``, ``macro_f1``, ``hit@K``,
``recall@K``, ``ndcg@K``, ``mrr@K`` (ranking names may end in ``_full`` or
``_sampled`` to name the evaluation protocol, e.g. ``ndcg@10_full``; the
suffix is kept in :attr:`Metric.name` and does not change the computation),
``map``, ``minp``, ``rank{K}`` and its alias ``cmc@K`` (re-ID; each may end in ``_rerank`` to name
the k-reciprocal re-ranking protocol, e.g. ``map_rerank``: the re-ID task then scores re-ranked
distances), ``rsum``, ``i2t_r@K``,
``t2i_r@K``, ``i2t_map``, ``t2i_map`` (image-text retrieval).

Ties, infinities and exclusions -- one convention for every rank behind a reported number (full
ranking, sampled candidates, top-N lists, re-ID and retrieval galleries):

* **Ties count against the target** (pessimistic): a target's 0-based rank is the number of other
  candidates scoring at least as high (in a gallery: at most as far). A constant model ranks every
  target last, and the same scores give the same metrics whatever the batch size, the row order
  or the length of a top-N list. Ranks are counted (``>=`` over the candidates), never read off a
  sort, whose order among ties is unspecified.
* **NaN scores are refused** (``ValueError`` naming the input). In a ranking ``+inf`` is a score
  like any other and ``-inf`` marks an item the model masks: it is never listed, and a target
  scored ``-inf`` is a miss (rank :data:`UNRANKED`). In a gallery ``±inf`` distances are ordinary
  values (``+inf`` is farthest).
* **A target inside the row's excluded history is a miss** (:data:`UNRANKED`) in every protocol,
  as in RecBole's full sort, which masks the history before ranking: a model that may never
  recommend a seen item cannot hit it.
* **Top-N lists** (submissions) order equal scores by lower item id first.
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
    "macro_f1",
    "target_ranks",
    "batched_target_ranks",
    "count_ranks",
    "has_nan",
    "ranks_from_topn",
    "sample_negatives",
    "sampled_target_ranks",
    "hit_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "ranking_report",
    "query_gallery_metrics",
    "reid_from_distances",
    "retrieval_metrics",
    "RETRIEVAL_KS",
    "reid_metrics",
]

TASKS = ("regression", "classification", "ranking", "reid", "retrieval")

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


def has_nan(t: torch.Tensor) -> bool:
    """Whether ``t`` holds a NaN, in about one read: a sum is NaN only if a value is NaN or both
    infinities occur, and only then is every value looked at."""
    return t.is_floating_point() and bool(torch.isnan(t.sum())) and bool(torch.isnan(t).any())


def _score_tensor(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """A 2-D real tensor without NaN (a NaN target score would rank first)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(_to_numpy(x, name))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, n_items], got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device)
    t = t.detach()
    if has_nan(t):
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


def _excluded_pairs(history: Any, name: str, n_rows: int, n_items: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``history`` (a bool mask or a list of index arrays, see :func:`_history_mask`) as (row, item) pairs."""
    if history is None:
        return None
    if _is_ragged(history):
        return _ragged_pairs(history, name, n_rows, n_items)
    mask = _history_mask(history, name, n_rows, n_items, torch.device("cpu"))
    rows, cols = np.nonzero(mask.numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


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


def macro_f1(y_true: Any, y_pred: Any) -> float:
    r"""Unweighted mean over classes of the per-class F1 score.

    ``y_pred`` holds labels ``[N]`` or class scores ``[N, C]`` (labels by ``argmax``, as in
    :func:`accuracy`). The classes averaged over are those that are true or predicted at least
    once, as in scikit-learn's ``f1_score(average="macro")``; one predicted but never true (or
    true but never predicted) scores 0.

    .. math:: F_1^{macro} = \frac{1}{|C|}\sum_{c} \frac{2\,TP_c}{2\,TP_c + FP_c + FN_c}
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
    classes, codes = np.unique(np.concatenate([true, pred]), return_inverse=True)
    t, p = codes[: len(true)], codes[len(true) :]
    tp = np.bincount(t[t == p], minlength=len(classes))
    fp = np.bincount(p, minlength=len(classes)) - tp
    fn = np.bincount(t, minlength=len(classes)) - tp
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


# ----------------------------------------------------------------------------
# Ranking: ranks of the positive item
# ----------------------------------------------------------------------------


def _count_true(mask: np.ndarray, n: int) -> np.ndarray:
    """Per ``mask[..., :n]`` row, the number of True; ``mask[..., n:]`` must be False.

    The last axis, a multiple of 8 bytes long, is read as uint64 words holding eight 0/1 bytes:
    summing at most 255 words never carries from one byte into the next, and the bytes of the
    sums are added last -- several times faster than ``np.count_nonzero(axis=...)``.
    """
    words = mask.view(np.uint64)
    n_words = words.shape[-1]
    groups = -(-n_words // 255)
    sums = words.reshape(*words.shape[:-1], groups, n_words // groups).sum(axis=-1)
    return sums.view(np.uint8).reshape(*mask.shape[:-1], groups * 8).sum(axis=-1, dtype=np.int64)


def _padded_width(n: int) -> int:
    """A length >= n for :func:`_count_true`: whole uint64 words in equal groups of at most 255."""
    n_words = -(-n // 8)
    groups = -(-n_words // 255)
    return groups * -(-n_words // groups) * 8


def _count_at_least(scores: torch.Tensor, threshold: torch.Tensor) -> np.ndarray:
    """Per row, the number of scores ``>=`` the row's threshold, in one pass over the scores.

    On the CPU the comparison goes into a padded boolean buffer counted eight bytes at a time
    (:func:`_count_true`), several times faster than torch's or numpy's boolean row sums; elsewhere
    the count stays on the device.
    """
    if scores.device.type != "cpu":
        return (scores >= threshold).sum(dim=1).cpu().numpy()
    if scores.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        scores, threshold = scores.float(), threshold.float()
    n = scores.shape[1]
    mask = np.empty((scores.shape[0], _padded_width(n)), dtype=bool)
    mask[:, n:] = False
    np.greater_equal(scores.numpy(), threshold.numpy(), out=mask[:, :n])
    return _count_true(mask, n)


def count_ranks(
    scores: torch.Tensor, targets: torch.Tensor, excluded: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    r"""Pessimistic 0-based ranks by counting: the primitive behind every full-ranking number.

    ``scores`` ``[B, n_items]`` (NaN-free, already checked), ``targets`` ``[B]`` int64 on the same
    device, ``excluded`` (row, item) index pairs that are not candidates (a user's history, a
    padding id; repeated pairs count once). One comparison pass over the scores, then a gather of
    the excluded pairs -- no sort, no copy of the scores:

    .. math:: r_i = \#\{j : s_{ij} \ge s_{it_i}\} - 1 - \#\{j \in E_i, j \ne t_i : s_{ij} \ge s_{it_i}\}

    and :data:`UNRANKED` where :math:`t_i \in E_i` or :math:`s_{it_i} = -\infty` (masked by the model).
    """
    threshold = scores.gather(1, targets[:, None])
    ranks = _count_at_least(scores, threshold) - 1
    miss = (threshold[:, 0] == -math.inf).cpu().numpy()
    if excluded is not None and len(excluded[0]):
        n_items = scores.shape[1]
        keys = np.sort(np.asarray(excluded[0], np.int64) * n_items + np.asarray(excluded[1], np.int64))
        rows, cols = np.divmod(keys[np.r_[True, keys[1:] != keys[:-1]]], n_items)  # each pair once
        if scores.device.type == "cpu":  # numpy's fancy indexing is several times faster than torch's here
            values = scores.numpy()[rows, cols]
        else:
            values = scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)]
            values = values.cpu().numpy()
        counted = values >= threshold[:, 0].cpu().numpy()[rows]
        ranks -= np.bincount(rows[counted], minlength=len(ranks))
        miss[rows[cols == targets.cpu().numpy()[rows]]] = True
    ranks[miss] = UNRANKED
    return ranks


def target_ranks(scores: Any, targets: Any, history_mask: Any = None) -> np.ndarray:
    r"""0-based rank of each row's positive item among all candidate items.

    ``scores`` is ``[B, n_items]`` (numpy or torch, any device), ``targets``
    ``[B]`` item ids (leave-one-out: one positive per row). ``history_mask`` --
    a bool ``[B, n_items]`` mask or a list of ``B`` 1-D arrays of item ids --
    names items the user already interacted with; they are not candidates, and
    a target among them, or scored ``-inf``, is a miss (:data:`UNRANKED`).

    .. math:: r_i = \#\{j \ne t_i,\ j \notin H_i : s_{ij} \ge s_{it_i}\}

    Ties count against the target (module docstring), so a constant-score
    model ranks every target last instead of first. RecBole ranks with
    ``torch.topk``, whose order among ties is unspecified; the two agree
    whenever scores are tie-free. NaN scores raise ``ValueError``.
    """
    s = _score_tensor(scores, "scores")
    b, n_items = s.shape
    t = _index_tensor(targets, "targets", b, n_items, s.device)
    return count_ranks(s, t, _excluded_pairs(history_mask, "history_mask", b, n_items))


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
            out.append(count_ranks(s, t, _excluded_pairs(h, "history", stop - start, n_items)))
    return np.concatenate(out)


def ranks_from_topn(topn_items: Any, targets: Any, scores: Any = None, *, padding: int | None = 0) -> np.ndarray:
    """0-based rank of each target inside a top-N item list (best first).

    Without ``scores`` (a submission file: the order is the submitter's statement) the rank is the
    position of the target's first occurrence. With the list's ``scores`` ``[B, N]`` ties count
    against the target, as everywhere (module docstring): the rank is the number of other listed
    items scoring at least the target's score, and a target tying the score of the last entry of a
    full list (no ``padding`` id in it) is :data:`UNRANKED`, since equal scores may go on past the
    list. A target absent from its list is :data:`UNRANKED`, a miss for every metric@k, so these
    ranks are exact for every ``k < N``.
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
    listed = found.any(axis=1)
    position = found.argmax(axis=1)
    if scores is None:
        return np.where(listed, position, UNRANKED).astype(np.int64)
    values = _to_numpy(scores, "scores").astype(np.float64, copy=False)
    if values.shape != top.shape:
        raise ValueError(f"scores must have the shape of topn_items {top.shape}, got {values.shape}")
    if np.isnan(values).any():
        raise ValueError("scores contains NaN")
    real = top != padding if padding is not None else np.ones(top.shape, bool)
    own = values[np.arange(len(top)), position][:, None]
    ranks = ((values >= own) & real).sum(axis=1) - 1
    open_ended = real.all(axis=1) & (values[:, -1] == own[:, 0]) if top.shape[1] else np.zeros(len(top), bool)
    return np.where(listed & ~open_ended & (own[:, 0] > -np.inf), ranks, UNRANKED).astype(np.int64)


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
    against the target, and a target in its row's ``history`` or scored ``-inf``
    is a miss (:data:`UNRANKED`), as in :func:`target_ranks`:

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
    ranks = (cand_scores[:, 1:] >= cand_scores[:, :1]).sum(dim=1).cpu().numpy()
    ranks[(cand_scores[:, 0] == -math.inf).cpu().numpy()] = UNRANKED
    excluded = _excluded_pairs(history, "history", len(ranks), int(n_items or s.shape[1]))
    if excluded is not None:
        rows, cols = excluded
        ranks[rows[cols == t.astype(np.int64)[rows]]] = UNRANKED
    return ranks


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


#: Element budget of one query batch's temporaries in :func:`query_gallery_metrics` and the re-ID
#: entry points: distance rows, comparison masks and bucket indices never exceed it (plus the
#: ``[batch, matches]`` bookkeeping). 2**22 keeps them within a CPU's last-level cache.
_QG_BUDGET = 1 << 22
#: Largest per-batch match count counted by direct comparisons (one vectorised pass per sorted
#: match distance, ~0.25 ns per entry and match on a CPU); above it each gallery entry is bucketed
#: by a binary search instead (``torch.searchsorted``: ~35 ns per entry already at 10 matches).
_QG_COMPARE_MAX = 32


def _count_at_most(d: np.ndarray | torch.Tensor, d_rows: np.ndarray | None, t: np.ndarray, flip: bool,
                   scratch: list) -> np.ndarray:
    """``out[i, j] = #{g : s * d[r_i, g] <= t[i, j]}`` for ascending rows ``t [b, m]``, ``s = -1 if flip``.

    ``r_i = d_rows[i]``, or ``i`` when ``d_rows`` is None. ``d`` is a numpy array (CPU: numpy
    counts booleans much faster than torch, and without a thread pool per small op) or a tensor
    on its device. Up to :data:`_QG_COMPARE_MAX` thresholds: one vectorised comparison per
    threshold, ``O(G m)`` per row, read from a row in cache. Above: each entry's bucket (the
    number of thresholds strictly below it) by ``searchsorted``, ``O(G log m)``, a histogram and
    a cumulative sum. Temporaries stay within about :data:`_QG_BUDGET` elements.
    """
    b, m = t.shape
    n_g = d.shape[1]
    rows = np.arange(b) if d_rows is None else d_rows
    if m > _QG_COMPARE_MAX or not isinstance(d, np.ndarray):
        dt = torch.from_numpy(d) if isinstance(d, np.ndarray) else d
        tt = torch.as_tensor(t, device=dt.device)
        out = np.empty((b, m), dtype=np.int64)
        step = max(1, _QG_BUDGET // max(1, n_g * (1 if m > _QG_COMPARE_MAX else m)))
        for s in range(0, b, step):
            part = dt.index_select(0, torch.as_tensor(rows[s : s + step], device=dt.device))
            part = -part if flip else part
            ts = tt[s : s + step]
            if m <= _QG_COMPARE_MAX:
                out[s : s + step] = (part[:, None, :] <= ts[:, :, None]).sum(dim=2).cpu().numpy()
                continue
            bucket = torch.searchsorted(ts, part)
            bucket += torch.arange(bucket.shape[0], device=dt.device)[:, None] * (m + 1)
            hist = torch.bincount(bucket.view(-1), minlength=bucket.shape[0] * (m + 1)).view(-1, m + 1)
            out[s : s + step] = hist[:, :m].cumsum(dim=1).cpu().numpy()
        return out
    width = _padded_width(n_g)
    if not scratch or scratch[0].size < b * m * width:
        scratch[:] = [np.empty(b * m * width, dtype=bool)]
    mask = scratch[0][: b * m * width].reshape(b, m, width)
    mask[:, :, n_g:] = False
    compare = np.greater_equal if flip else np.less_equal
    bounds = -t if flip else t
    if n_g < 4096:  # short rows: one call for the batch beats a call per row
        compare((d if d_rows is None else d[rows])[:, None, :], bounds[:, :, None], out=mask[:, :, :n_g])
    else:
        for i in range(b):  # each distance row read once, straight from d (no copy of the batch)
            compare(d[rows[i]], bounds[i][:, None], out=mask[i, :, :n_g])
    return _count_true(mask, n_g)


def _id_tensor(x: Any, name: str, length: int | None, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(_to_numpy(x, name))
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {t.dtype}")
    if t.ndim != 1 or (length is not None and t.shape[0] != length):
        want = f"({length},)" if length is not None else "1-D"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)


def _id_array(x: Any, name: str, length: int) -> np.ndarray:
    return _id_tensor(x, name, length, torch.device("cpu")).numpy()


def _factorize(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


class _QueryGallery:
    """The query x gallery engine: match bookkeeping, per-query positions, CMC / AP / INP.

    Built from ids (and cameras) alone; distance rows arrive in query batches through
    :meth:`add`, in the order :meth:`batches` proposes (queries sorted by their number of
    matches, so a batch's padding is small). Per-query results are stored by query index, so
    nothing depends on the batching or on the gallery order.
    """

    def __init__(self, q_ids: np.ndarray, g_ids: np.ndarray, q_cams: np.ndarray | None,
                 g_cams: np.ndarray | None, max_rank: int, similarity: bool) -> None:
        n_q, n_g = len(q_ids), len(g_ids)
        self.n_g, self.max_rank, self.similarity = n_g, max_rank, similarity
        self.cameras = q_cams is not None
        key = _factorize(np.concatenate([q_ids, g_ids]))
        q_key, g_key = key[:n_q], key[n_q:]
        per_id = np.bincount(g_key, minlength=int(key.max(initial=0)) + 1)
        self.n_match = per_id[q_key]  # gallery entries with the query's id, same camera included
        self.g_order = np.argsort(g_key, kind="stable")  # gallery grouped by id
        self.start = (np.cumsum(per_id) - per_id)[q_key]  # where the query's id starts in g_order
        if self.cameras:
            cam = _factorize(np.concatenate([q_cams, g_cams]))
            pair = key * (int(cam.max()) + 1) + cam
            junk = np.bincount(pair[n_q:], minlength=int(pair.max()) + 1)[pair[:n_q]]
            self.q_cams, self.g_cams = q_cams, g_cams
        else:
            junk = np.zeros(n_q, dtype=np.int64)
        self.n_good = self.n_match - junk
        self.first = np.zeros(n_q, dtype=np.int64)
        self.ap = np.zeros(n_q, dtype=np.float64)
        self.inp = np.zeros(n_q, dtype=np.float64)
        self._scratch: list[np.ndarray] = []  # reused comparison buffer

    def batches(self, max_rows: int | None) -> list[np.ndarray]:
        """Query indices with a match, by ascending match count, in batches within the budget."""
        order = np.flatnonzero(self.n_good > 0)
        order = order[np.argsort(self.n_good[order], kind="stable")]
        out, s = [], 0
        while s < len(order):
            rows = max(1, _QG_BUDGET // max(1, self.n_g * min(int(self.n_good[order[s]]), _QG_COMPARE_MAX)))
            rows = min(rows, max_rows or rows)
            m_last = min(int(self.n_good[order[min(s + rows, len(order)) - 1]]), _QG_COMPARE_MAX)
            rows = min(rows, max(1, _QG_BUDGET // max(1, self.n_g * m_last)))
            out.append(order[s : s + rows])
            s += rows
        return out

    def add(self, rows: np.ndarray, d: np.ndarray | torch.Tensor, d_rows: np.ndarray | None = None) -> None:
        """Evaluate queries ``rows`` (from :meth:`batches`); their distances are ``d[d_rows]``.

        ``d`` is a tensor on any device or, on the CPU, a float numpy array; ``d_rows=None`` means
        ``d`` holds exactly the batch's rows, in order.
        """
        if isinstance(d, torch.Tensor):
            if d.dtype in (torch.float16, torch.bfloat16):
                d = d.float()  # exact; numpy has no bfloat16 and compares float32 much faster
            elif not d.is_floating_point():
                d = d.double()  # integer distances (e.g. Hamming): exact below 2**53
            if d.device.type == "cpu":
                d = d.numpy()
        b = len(rows)
        at = np.arange(b) if d_rows is None else d_rows
        n_match, n_good = self.n_match[rows], self.n_good[rows]
        slot = np.arange(int(n_match.max()))
        valid = slot < n_match[:, None]  # [b, W]: the gallery entries sharing the query's id
        cols = self.g_order[np.minimum(self.start[rows][:, None] + slot, self.n_g - 1)]
        good = valid & (self.g_cams[cols] != self.q_cams[rows][:, None]) if self.cameras else valid
        if isinstance(d, np.ndarray):
            same_id = d[at[:, None], cols]
        else:
            same_id = d[torch.as_tensor(at, device=d.device)[:, None], torch.as_tensor(cols, device=d.device)]
            same_id = same_id.cpu().numpy()
        if self.similarity:
            same_id = -same_id  # as distances; the big comparison flips instead of negating d
        m = int(n_good.max())
        # t[i, j]: the j-th smallest match distance (slots j >= n_good[i] are padding, ignored below)
        t = np.sort(np.where(good, same_id, np.inf), axis=1)[:, :m].astype(same_id.dtype)
        # same-id entries (matches and same-camera junk) at distance <= t[i, j]
        if m <= _QG_COMPARE_MAX:  # b * m * W <= b * m * G, within the budget (see batches)
            n_same_le = np.count_nonzero((same_id[:, None, :] <= t[:, :, None]) & valid[:, None, :], axis=2)
        else:  # padding (+inf) sorts last; it is counted only against t = +inf, where the clamp removes it
            same_sorted = np.sort(np.where(valid, same_id, np.inf), axis=1)
            n_same_le = np.stack([np.searchsorted(same_sorted[i], t[i], side="right") for i in range(b)])
            n_same_le = np.minimum(n_same_le, n_match[:, None])
        j = np.arange(m)
        # 0-based position: the other-id entries at most as far, then the j earlier matches
        pos = _count_at_most(d, d_rows, t, self.similarity, self._scratch) - n_same_le + j
        gain = np.where(j < n_good[:, None], (j + 1) / (pos + 1.0), 0.0)
        last = n_good - 1
        self.ap[rows] = np.cumsum(gain, axis=1)[np.arange(b), last] / n_good  # sequential sum: batch-invariant
        self.inp[rows] = n_good / (pos[np.arange(b), last] + 1.0)
        self.first[rows] = pos[:, 0]

    def result(self) -> dict[str, Any]:
        valid = self.n_good > 0
        n_valid, total = int(valid.sum()), len(valid)
        n_skipped = total - n_valid
        what = "same id, different camera" if self.cameras else "same id"
        if n_valid == 0:
            raise ValueError(f"no query has a valid gallery match ({what}); all {total} would be skipped")
        if n_skipped:
            warnings.warn(
                f"{n_skipped} of {total} queries have no valid gallery match ({what}) and were skipped",
                stacklevel=3,
            )
        hits = np.bincount(np.minimum(self.first[valid], self.max_rank), minlength=self.max_rank + 1)
        return {
            "cmc": np.cumsum(hits[: self.max_rank]) / n_valid,
            "map": float(self.ap[valid].mean()),
            "minp": float(self.inp[valid].mean()),
            "n_queries": n_valid,
            "n_skipped": n_skipped,
        }


def _query_gallery(d: Any, dname: str, ids: tuple[Any, Any], cams: tuple[Any, Any], names: tuple[str, ...],
                   max_rank: Any, similarity: bool, batch_size: Any) -> dict[str, Any]:
    max_rank = _positive_int(max_rank, "max_rank")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    if not isinstance(similarity, bool):
        raise TypeError(f"similarity must be a bool, got {type(similarity).__name__}")
    dist = _score_tensor(d, dname)
    n_q, n_g = dist.shape
    q_ids, g_ids = _id_array(ids[0], names[0], n_q), _id_array(ids[1], names[1], n_g)
    q_cams, g_cams = _camera_arrays(cams, names[2:], n_q, n_g)
    engine = _QueryGallery(q_ids, g_ids, q_cams, g_cams, max_rank, similarity)
    if dist.device.type == "cpu" and dist.dtype in (torch.float32, torch.float64):
        host = dist.numpy()
        for rows in engine.batches(batch_size):
            engine.add(rows, host, rows)  # rows read in place, no copy of the batch
    else:
        for rows in engine.batches(batch_size):
            engine.add(rows, dist.index_select(0, torch.as_tensor(rows, device=dist.device)))
    return engine.result()


def _camera_arrays(cams: tuple[Any, Any], names: tuple[str, ...], n_q: int, n_g: int
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    if (cams[0] is None) != (cams[1] is None):
        raise ValueError(f"{names[0]} and {names[1]} must both be given or both be None")
    if cams[0] is None:
        return None, None
    return _id_array(cams[0], names[0], n_q), _id_array(cams[1], names[1], n_g)


def query_gallery_metrics(
    distances: Any,
    q_ids: Any,
    g_ids: Any,
    q_cams: Any = None,
    g_cams: Any = None,
    *,
    max_rank: int = 50,
    similarity: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    r"""CMC, mAP and mINP of a query x gallery matrix: re-ID, and image-text retrieval without cameras.

    ``distances`` ``[n_q, n_g]`` ranks the gallery for each query, nearest first (with
    ``similarity=True`` it holds scores, highest first). Gallery entries with the query's id are
    its matches (several per query, e.g. the five captions of an image). With cameras, entries
    with the query's id *and* camera are removed from the query's list (re-ID's junk); without
    (``q_cams = g_cams = None``) nothing is removed. Queries without a match are skipped, counted
    in ``n_skipped`` and reported by one ``warnings.warn``.

    **Ties count against the target**: among gallery entries at the same distance, non-matches
    come before matches, so the 0-based position of the :math:`j`-th nearest match is
    :math:`p_j = \#\{\text{non-matches } g : d_g \le d_{(j)}\} + j - 1`. A constant matrix gives
    the worst possible values, and results depend neither on the gallery order nor on the batch
    size. ``NaN`` is refused; :math:`\pm\infty` are ordinary values (``+inf`` farthest). Then

    .. math::
        \mathrm{CMC}(r) = \Pr[p_1 < r], \quad
        \mathrm{AP} = \frac{1}{m}\sum_{j=1}^m \frac{j}{p_j + 1}, \quad
        \mathrm{INP} = \frac{m}{p_m + 1}

    averaged over evaluated queries (``cmc[k-1]`` is retrieval's Recall@k; it saturates at 1
    beyond the gallery size). Returns ``{"cmc": array[max_rank], "map", "minp", "n_queries"
    (evaluated), "n_skipped"}``.

    Cost: no row is sorted (:math:`O(G \log G)`). Per query batch, the matches' distances are
    gathered and sorted (:math:`O(m \log m)`), then each distance row is read once and its
    :math:`G` entries are compared with the :math:`m` match distances: :math:`O(G m)` vectorised
    comparisons (from cache, counted 8 bytes at a time) while :math:`m \le 32`, a binary search,
    :math:`O(G \log m)`, above. :math:`m` is the batch's largest match count, which is the
    query's own up to padding: queries are batched in order of match count. Memory: temporaries
    stay within a fixed element budget (``_QG_BUDGET``; ``batch_size`` caps the queries per batch
    further), the input is never copied whole. Add one read of the matrix for the NaN check.
    """
    return _query_gallery(distances, "distances", (q_ids, g_ids), (q_cams, g_cams),
                          ("q_ids", "g_ids", "q_cams", "g_cams"), max_rank, similarity, batch_size)


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
    skipped, counted in ``n_skipped`` and reported by one ``warnings.warn``
    (``q_camids = g_camids = None`` removes nothing). **Ties count against the
    target**: among entries at equal distance, non-matches rank before matches
    (torchreid's ``np.argsort`` leaves their order unspecified), so a constant
    matrix gives the worst possible values and nothing depends on the gallery
    order. With :math:`p_1 < \dots < p_m` the 0-based positions of the
    query's ``m`` matches in the filtered list:

    .. math::
        \mathrm{CMC}(r) = \Pr[p_1 < r], \quad
        \mathrm{AP} = \frac{1}{m}\sum_{j=1}^m \frac{j}{p_j + 1}, \quad
        \mathrm{INP} = \frac{m}{p_m + 1}

    AP and INP (mINP, Ye et al. AGW) are averaged over evaluated queries.
    Returns ``{"cmc": array[max_rank], "map", "minp", "n_queries" (evaluated),
    "n_skipped"}``; ``cmc[r-1]`` saturates at 1 beyond the gallery size. NaN is
    refused, ``+inf`` is the farthest distance. Engine and cost:
    :func:`query_gallery_metrics`.
    """
    return _query_gallery(distmat, "distmat", (q_pids, g_pids), (q_camids, g_camids),
                          ("q_pids", "g_pids", "q_camids", "g_camids"), max_rank, False, None)


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
    the device of ``query_features``. Protocol, ties (they count against the
    target: non-matches first) and cost: see :func:`reid_from_distances`;
    ``query_cams = gallery_cams = None`` removes nothing (retrieval).
    Returns ``{"map", "rank{r}" for r in ranks, "minp", "n_queries",
    "n_skipped"}``.
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
    qp = _id_array(query_ids, "query_ids", qf.shape[0])
    gp = _id_array(gallery_ids, "gallery_ids", gf.shape[0])
    qc, gc = _camera_arrays((query_cams, gallery_cams), ("query_cams", "gallery_cams"), qf.shape[0], gf.shape[0])
    if metric == "cosine":
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    g_sq = (gf * gf).sum(dim=1)
    engine = _QueryGallery(qp, gp, qc, gc, max(ranks), similarity=False)
    with torch.no_grad():
        for rows in engine.batches(batch_size):  # queries with a match, at most batch_size at a time
            q = qf.index_select(0, torch.as_tensor(rows, device=qf.device))
            sim = q @ gf.T
            if metric == "cosine":
                dist = 1.0 - sim
            else:
                dist = ((q * q).sum(dim=1)[:, None] + g_sq[None, :] - 2.0 * sim).clamp_(min=0.0)
            engine.add(rows, dist)
    res = engine.result()
    out: dict[str, float | int] = {"map": res["map"]}
    out.update({f"rank{r}": float(res["cmc"][r - 1]) for r in ranks})
    out.update({k: res[k] for k in ("minp", "n_queries", "n_skipped")})
    return out


RETRIEVAL_KS = (1, 5, 10)  # the Recall@K of every retrieval report


def retrieval_metrics(
    image_features: Any,
    text_features: Any,
    text_images: Any,
    *,
    batch_size: int = 512,
) -> dict[str, float | int]:
    r"""Image ↔ text retrieval metrics: Recall@1/5/10 both ways, their sum, mAP both ways.

    ``image_features`` ``[N, D]`` and ``text_features`` ``[T, D]`` are ranked by cosine similarity;
    ``text_images`` ``[T]`` gives the row of the image each text describes. Image → text: a
    query image's matches are all its texts (Recall@K: any of them in the top K); text → image:
    a query text's one match is its image. Both are :func:`reid_metrics` without cameras, so ties
    count against the target and memory stays bounded by ``batch_size`` query rows.

    .. math:: \mathrm{rsum} = \sum_{K \in \{1,5,10\}} (R@K_{i\to t} + R@K_{t\to i}) \in [0, 6]

    (the literature's rsum is this × 100). Recall grows as the gallery shrinks: compare numbers
    over galleries of the same size only. Returns ``{"i2t_r@K", "t2i_r@K", "rsum", "i2t_map",
    "t2i_map", "n_images", "n_texts"}``.
    """
    owner = _to_numpy(text_images, "text_images").astype(np.int64).reshape(-1)
    images = np.arange(_to_numpy(image_features, "image_features").shape[0])
    i2t = reid_metrics(image_features, images, None, text_features, owner, None, ranks=RETRIEVAL_KS,
                       metric="cosine", batch_size=batch_size)  # fmt: skip
    t2i = reid_metrics(text_features, owner, None, image_features, images, None, ranks=RETRIEVAL_KS,
                       metric="cosine", batch_size=batch_size)  # fmt: skip
    out: dict[str, float | int] = {}
    for way, res in (("i2t", i2t), ("t2i", t2i)):
        out.update({f"{way}_r@{k}": res[f"rank{k}"] for k in RETRIEVAL_KS})
    out["rsum"] = float(sum(out[f"{way}_r@{k}"] for way in ("i2t", "t2i") for k in RETRIEVAL_KS))
    out.update({"i2t_map": i2t["map"], "t2i_map": t2i["map"], "n_images": len(images), "n_texts": len(owner)})
    return out


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A named metric with its optimisation direction, declared once.

    ``fn`` takes ``(y_true, y_pred)`` for regression / classification, the
    rank array for ranking, the dict from :func:`reid_metrics` for re-ID and the
    one from :func:`retrieval_metrics` for retrieval.
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


def _result_getter(key: str) -> Callable[[Mapping[str, Any]], float]:
    def get(results: Mapping[str, Any]) -> float:
        if key not in results:
            raise ValueError(f"the metric results have no {key!r} (re-ID: include it in reid_metrics(ranks=...))")
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
_RERANK = r"(?:_rerank)?"  # re-ID: scored on k-reciprocal re-ranked distances (harness.reranking)


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
    _Family("macro_f1", "macro_f1", "classification", True, lambda m: macro_f1),
    *(_ranking_family(name) for name in _RANKING_FNS),
    _Family("map", rf"map{_RERANK}", "reid", True, lambda m: _result_getter("map")),
    _Family("minp", rf"minp{_RERANK}", "reid", True, lambda m: _result_getter("minp")),
    _Family("rankK", rf"rank{_K}{_RERANK}", "reid", True, lambda m: _result_getter(f"rank{m['k']}")),
    _Family("cmc@K", rf"cmc@{_K}{_RERANK}", "reid", True, lambda m: _result_getter(f"rank{m['k']}")),
    _Family("rsum", "rsum", "retrieval", True, lambda m: _result_getter("rsum")),
    _Family("i2t_r@K", rf"i2t_r@{_K}", "retrieval", True, lambda m: _result_getter(f"i2t_r@{m['k']}")),
    _Family("t2i_r@K", rf"t2i_r@{_K}", "retrieval", True, lambda m: _result_getter(f"t2i_r@{m['k']}")),
    _Family("i2t_map", "i2t_map", "retrieval", True, lambda m: _result_getter("i2t_map")),
    _Family("t2i_map", "t2i_map", "retrieval", True, lambda m: _result_getter("t2i_map")),
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
        "(K is a positive int; ranking metrics take @K and an optional _full/_sampled suffix, e.g. ndcg@10; "
        "re-ID metrics an optional _rerank suffix, e.g. map_rerank)"
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

"""The ``sequential_recommendation`` task: the prediction type, full ranking, sampled candidates,
scoring, fusion, the submission, and the family base class.

A prediction of the ``sequential_recommendation`` task is a :class:`Recommendations`: for each
user, the top-N items over the whole catalogue with the user's history masked (best first, with
scores) -- the submission --, the target's rank among all candidate items, and, for the
``_sampled`` protocol, the scores of a fixed candidate set: the row's target and ``n`` sampled
negatives. Families never rank: they score users × items (:class:`SequentialRecommender`),
and :func:`full_ranking` here ranks in memory-bounded batches on the family's device, so every
family is evaluated the same way. A family that cannot score every item, a generative one,
decodes ranked lists (:class:`ListRecommender`); the core masks the histories out of them
(:func:`mask_lists`) and reads ranks off them, so it reports ``_full`` metrics, exact for every
K up to the list's length.

Every rank follows the convention of :mod:`harness.metrics` (ties against the target, NaN refused,
``-inf`` masked, a target in the history a miss). Full-ranking ranks are counted over the whole
catalogue (:func:`harness.metrics.count_ranks`), so they do not depend on the list length N; where
only lists exist (fused ensembles), :func:`harness.metrics.ranks_from_topn` reads them off the
list and its scores, exact for every metric@K with K < N. Sampled ranks count the negatives
scoring at least the target's score.

A family subclasses :class:`SequentialRecommender` (or :class:`ListRecommender`), trains in
:meth:`~Recommender.fit_recommender` on what :func:`training_sequences` allows, and
implements :meth:`~SequentialRecommender.score` (or :meth:`~ListRecommender.recommend`); prediction and validation scoring are the same
for every family, so their numbers are comparable. Rows of the frames are users: ``user_id``,
``history`` (item ids, oldest first), ``target`` (the next item) and ``user_text``;
``dataset.meta`` has ``n_items`` (0 is padding) and ``items``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import abc
import re
import warnings

import numpy as np
import pandas as pd
import torch

from harness.blending import normalise_weights
from harness.errors import HarnessError
from harness.metrics import UNRANKED, count_ranks, has_nan, ranking_report, ranks_from_topn, sample_negatives
from harness.registry import Family, FitContext
from harness.submissions import check_header, match_rows, parse_lists
from harness.tasks import TaskType

__all__ = [
    "TOP_N",
    "REPORT_KS",
    "SUBMISSION_K",
    "Recommendations",
    "SampledProtocol",
    "FullRanking",
    "full_ranking",
    "item_counts",
    "popularity_scores",
    "fuse",
    "RecommendationTask",
    "TASK",
    "Recommender",
    "SequentialRecommender",
    "ListRecommender",
    "mask_lists",
    "training_sequences",
    "pad_left",
]

TOP_N = 50  # items kept per user: above the largest reported K, with room for fusing fold models
REPORT_KS = (5, 10, 20)  # the Ks of every ranking report
SUBMISSION_K = 20  # items per user in the submission file
MAX_SCORE_ELEMENTS = 2**24  # scores held at once while ranking (64 MiB of float32)


@dataclass
class Recommendations:
    """Per row (user): the top-N items with their scores, the target's rank, the sampled-protocol scores.

    ``items`` ``[B, N]`` int64 item ids, best first, equal scores by lower id (0, the padding id,
    fills rows whose unmasked catalogue is shorter than N); ``scores`` ``[B, N]`` float32,
    non-increasing along each row; ``ranks`` ``[B]`` int64, the row target's pessimistic rank
    among every candidate item, or ``None`` where only the lists are known (a fusion of several
    models' lists); ``sampled`` ``[B, 1 + n_negatives]`` float32 scores of the row's target
    (column 0) and its negatives, or ``None`` when not computed.
    """

    items: np.ndarray
    scores: np.ndarray
    sampled: np.ndarray | None = None
    ranks: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.items.ndim != 2 or self.items.shape != self.scores.shape:
            raise ValueError(f"items and scores must both be [B, N], got {self.items.shape} and {self.scores.shape}")
        if self.sampled is not None:
            self.sampled = np.asarray(self.sampled, dtype=np.float32)
            if self.sampled.ndim != 2 or len(self.sampled) != len(self.items):
                raise ValueError(f"sampled must be [B, 1 + n_negatives] with B={len(self.items)}, got {self.sampled.shape}")
        if self.ranks is not None:
            self.ranks = np.asarray(self.ranks, dtype=np.int64)
            if self.ranks.shape != (len(self.items),):
                raise ValueError(f"ranks must be [B] with B={len(self.items)}, got {self.ranks.shape}")

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray) -> "Recommendations":
        sampled = None if self.sampled is None else self.sampled[index]
        ranks = None if self.ranks is None else self.ranks[index]
        return Recommendations(self.items[index], self.scores[index], sampled, ranks)

    @classmethod
    def concat(cls, parts: Sequence["Recommendations"]) -> "Recommendations":
        def joined(field: str) -> np.ndarray | None:
            values = [getattr(p, field) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(joined("items"), joined("scores"), joined("sampled"), joined("ranks"))


# ----------------------------------------------------------------------------
# Ranking over the whole catalogue
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FullRanking:
    """What :func:`full_ranking` found: ``ranks`` ``[B]`` (``None`` without targets), ``items`` and
    ``scores`` ``[B, n]`` (``n = 0`` when no list was asked for), ``gathered`` ``[B, C]`` (the
    scores of the ``gather`` items, or ``None``)."""

    ranks: np.ndarray | None
    items: np.ndarray
    scores: np.ndarray
    gathered: np.ndarray | None = None


def full_ranking(
    score_fn: Callable[[np.ndarray], torch.Tensor | np.ndarray],
    histories: Sequence[np.ndarray],
    n_items: int,
    *,
    targets: np.ndarray | None = None,
    n: int = TOP_N,
    device: torch.device | str = "cpu",
    max_elements: int = MAX_SCORE_ELEMENTS,
    row_ids: Sequence | None = None,
    source: str = "score_fn",
    gather: np.ndarray | None = None,
) -> FullRanking:
    """Targets' ranks and top-``n`` lists over every item, in one pass over each batch of scores.

    The candidates of a row are every item but the padding id 0 and the row's history.
    ``score_fn(rows)`` scores the rows at positions ``rows`` against every item: ``[len(rows),
    n_items]``; rows are batched so that one batch holds at most ``max_elements`` scores, handled
    on ``device``. With ``targets``, each target's rank is counted (:func:`harness.metrics.count_ranks`:
    ties against it, a target in its history a miss) without sorting the catalogue; with ``n > 0``,
    each row's best ``n`` candidates (capped at ``n_items - 1``) are listed, equal scores by lower
    item id, ``-inf`` scores never (the padding id fills the rest). With ``gather`` ``[B, C]`` item
    ids (e.g. the sampled protocol's candidates), their unmasked scores are read in the same pass.

    Bad input is a :class:`HarnessError` naming ``source`` and the row (``row_ids`` label rows in
    messages): NaN scores, history or target ids outside ``[1, n_items)``.
    """
    n_rows = len(histories)
    if n_rows == 0:
        raise ValueError("histories is empty")
    label = (lambda i: f"row {i}") if row_ids is None else (lambda i: f"user {row_ids[i]}")
    lengths = np.fromiter((len(h) for h in histories), np.int64, n_rows)
    flat = np.concatenate([np.asarray(h, np.int64).reshape(-1) for h in histories]) if lengths.sum() else \
        np.zeros(0, np.int64)  # fmt: skip
    owner = np.repeat(np.arange(n_rows), lengths)
    _check_ids(flat, owner, n_items, "history", label)
    if targets is not None:
        targets = np.array(targets, np.int64)  # a writable copy
        if targets.shape != (n_rows,):
            raise ValueError(f"targets must have shape ({n_rows},), got {targets.shape}")
        _check_ids(targets, np.arange(n_rows), n_items, "target", label)
    n = max(0, min(int(n), n_items - 1))
    device = torch.device(device)
    batch = max(1, min(n_rows, max_elements // n_items))
    starts = np.r_[0, np.cumsum(lengths)]
    ranks = None if targets is None else np.empty(n_rows, np.int64)
    items, scores = np.zeros((n_rows, n), np.int64), np.zeros((n_rows, n), np.float32)
    gathered = None if gather is None else np.empty(np.shape(gather), np.float32)
    with torch.no_grad():
        for start in range(0, n_rows, batch):
            stop = min(start + batch, n_rows)
            s = torch.as_tensor(score_fn(np.arange(start, stop))).detach().to(device=device, dtype=torch.float32)
            if tuple(s.shape) != (stop - start, n_items):
                raise ValueError(f"{source} must return [{stop - start}, {n_items}] scores, got {tuple(s.shape)}")
            if has_nan(s):
                row, item = (int(v) for v in torch.nonzero(torch.isnan(s))[0])
                raise HarnessError(
                    f"{source} returned {int(torch.isnan(s).sum())} NaN scores (first: {label(start + row)}, item "
                    f"{item}); scores must be real numbers (-inf masks an item)."
                )
            # excluded (row, item) pairs of the batch: each row's padding id and history
            local = np.r_[np.arange(stop - start), owner[starts[start] : starts[stop]] - start]
            excluded = (local, np.r_[np.zeros(stop - start, np.int64), flat[starts[start] : starts[stop]]])
            if ranks is not None:
                ranks[start:stop] = count_ranks(s, torch.as_tensor(targets[start:stop], device=device), excluded)
            if gathered is not None:
                gathered[start:stop] = s.gather(1, torch.as_tensor(gather[start:stop], device=device)).cpu().numpy()
            if n:
                masked = s.clone()
                masked[torch.as_tensor(excluded[0], device=device), torch.as_tensor(excluded[1], device=device)] = \
                    -torch.inf  # fmt: skip
                items[start:stop], scores[start:stop] = _top_n_lists(masked, n)
    return FullRanking(ranks, items, scores, gathered)


def _check_ids(ids: np.ndarray, owner: np.ndarray, n_items: int, what: str, label: Callable[[int], str]) -> None:
    bad = (ids < 1) | (ids >= n_items)
    if bad.any():
        first = int(np.argmax(bad))
        raise HarnessError(
            f"{bad.sum()} {what} item ids are outside [1, {n_items}) (first: {label(int(owner[first]))}, id "
            f"{int(ids[first])}); item ids run from 1 to n_items - 1, 0 being padding."
        )


def _top_n_lists(masked: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` columns per row, equal scores by lower column id, ``-inf`` replaced by the padding id.

    ``torch.topk`` picks among equal scores in an unspecified order, so its ``n + 1``-th value
    tells where ties reach past the cut; only those rows are completed with the lowest tied ids.
    """
    k = min(n + 1, masked.shape[1])
    values, index = torch.topk(masked, k, dim=1)
    index, by_id = index.sort(dim=1)
    values = values.gather(1, by_id)
    order = values.sort(dim=1, descending=True, stable=True).indices
    values, index = values.gather(1, order), index.gather(1, order)
    if k > n:
        cut = values[:, n - 1]
        for row in torch.nonzero((values[:, n] == cut) & (cut > -torch.inf)).flatten().tolist():
            above = int((values[row, :n] > cut[row]).sum())
            index[row, above:n] = torch.nonzero(masked[row] == cut[row]).flatten()[: n - above]
            values[row, above:n] = cut[row]
    values, index = values[:, :n], index[:, :n]
    index[values == -torch.inf] = 0
    return index.cpu().numpy(), values.cpu().numpy()


def item_counts(sequences: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Interactions per item id (index 0, padding, stays 0)."""
    if not len(sequences):
        return np.zeros(n_items, np.int64)
    return np.bincount(np.concatenate([np.asarray(s, np.int64) for s in sequences]), minlength=n_items)[:n_items]


def popularity_scores(sequences: Sequence[np.ndarray], n_items: int) -> torch.Tensor:
    """Interaction counts as scores, ties going to the lower item id (a fraction below 1 never reorders counts)."""
    counts = item_counts(sequences, n_items)
    return torch.as_tensor(counts - np.arange(n_items) / n_items, dtype=torch.float32)


# ----------------------------------------------------------------------------
# Sampled evaluation
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SampledProtocol:
    """The candidate sets of the ``_sampled`` protocol: each row's target and ``n_negatives`` negatives.

    Negatives are drawn per row from a generator seeded by ``(seed, user_id, target)``, so a user's
    candidates are the same for every model, run and fold composition. They avoid the padding id,
    the row's history and its target. ``sampling="popularity"`` draws items in proportion to their
    interactions in the training frame (every interaction except the test targets).
    """

    n_items: int
    n_negatives: int = 100
    sampling: str = "uniform"
    popularity: np.ndarray | None = None
    seed: int = 0
    _drawn: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # (user, target, len) -> row

    @classmethod
    def from_dataset(cls, dataset) -> "SampledProtocol":
        meta = dataset.meta
        sampling = meta.get("negative_sampling", "uniform")
        if sampling not in ("uniform", "popularity"):
            raise HarnessError(f"negative_sampling must be 'uniform' or 'popularity', got {sampling!r}.")
        popularity = None
        if sampling == "popularity":
            train = dataset.train
            sequences = [*train["history"], train["target"].to_numpy()]
            popularity = item_counts(sequences, int(meta["n_items"])).astype(float)
        return cls(int(meta["n_items"]), int(meta.get("sampled_negatives", 100)), sampling, popularity)

    def candidates(self, part: pd.DataFrame) -> np.ndarray:
        """``[len(part), 1 + n_negatives]`` item ids: the target, then the negatives.

        A row's draw is kept, so predicting the same rows again (validation every epoch, best and
        last weights) does not draw again.
        """
        out = np.empty((len(part), 1 + self.n_negatives), np.int64)
        for row, (user, target, history) in enumerate(zip(part["user_id"], part["target"], part["history"])):
            key = (int(user), int(target), len(history))
            if key not in self._drawn:
                row_seed = int(np.random.SeedSequence([self.seed, int(user), int(target)]).generate_state(1)[0])
                excluded = [np.append(np.asarray(history, np.int64), 0)]
                self._drawn[key] = sample_negatives(
                    np.array([target], np.int64), self.n_items, excluded, n_negatives=self.n_negatives,
                    sampling=self.sampling, item_popularity=self.popularity, seed=row_seed,
                )[0]  # fmt: skip
            out[row, 0], out[row, 1:] = target, self._drawn[key]
        return out


# ----------------------------------------------------------------------------
# Fusion of several models' recommendations
# ----------------------------------------------------------------------------


def fuse(predictions: Sequence[Recommendations], weights: Sequence[float] | None = None, n: int | None = None,
         method: str = "mean", normalise: bool = False) -> Recommendations:  # fmt: skip
    """Blend several models' recommendations for the same rows.

    ``method="mean"``: weighted mean score over the union of the rows' candidates, an item missing
    from a model's list taking that list's lowest score (the most it could have scored there).
    With ``normalise``, each model's scores are first min-max scaled per row (for models whose
    scores have different scales, e.g. logits and counts). ``method="rrf"``: reciprocal-rank
    fusion, ``sum_m w_m / (60 + rank_m)``, which needs no common score scale. Sampled scores are
    averaged, min-max scaled per row with ``normalise`` or ``rrf`` (the candidates are shared by
    construction).
    """
    if not predictions:
        raise ValueError("nothing to fuse")
    if normalise or method == "rrf":
        predictions = [_min_max(p) for p in predictions]
    weights = np.full(len(predictions), 1.0 / len(predictions)) if weights is None else np.asarray(weights, float)
    n = n or predictions[0].items.shape[1]
    n_rows = len(predictions[0])
    items, scores = np.zeros((n_rows, n), np.int64), np.zeros((n_rows, n), np.float32)
    for row in range(n_rows):
        fused: dict[int, float] = {}
        lists = [(p.items[row], p.scores[row], w) for p, w in zip(predictions, weights)]
        union = {int(i) for ids, _, _ in lists for i in ids if i != 0}
        for ids, values, w in lists:
            if method == "mean":
                known = dict(zip(ids.tolist(), values.tolist()))
                floor = float(values[ids != 0].min()) if (ids != 0).any() else 0.0
                for item in union:
                    fused[item] = fused.get(item, 0.0) + w * known.get(item, floor)
            elif method == "rrf":
                for rank, item in enumerate(ids.tolist()):
                    if item != 0:
                        fused[item] = fused.get(item, 0.0) + w / (60.0 + rank + 1)
            else:
                raise ValueError(f"method must be 'mean' or 'rrf', got {method!r}")
        best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        items[row, : len(best)] = [item for item, _ in best]
        scores[row, : len(best)] = [value for _, value in best]
    sampled = None
    if all(p.sampled is not None for p in predictions):
        sampled = sum(w * p.sampled for p, w in zip(predictions, weights))
    return Recommendations(items, scores, sampled)


def _min_max(prediction: Recommendations) -> Recommendations:
    """Scores scaled to [0, 1] per row (list and sampled candidates separately); padding stays -inf."""

    def scale(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        finite = np.where(valid, values, np.nan)
        low, high = np.nanmin(finite, axis=1, keepdims=True), np.nanmax(finite, axis=1, keepdims=True)
        scaled = (values - low) / np.where(high > low, high - low, 1.0)
        return np.where(valid, scaled, -np.inf).astype(np.float32)

    with np.errstate(invalid="ignore"):
        scores = scale(prediction.scores, prediction.items != 0)
        sampled = None if prediction.sampled is None else scale(prediction.sampled, np.isfinite(prediction.sampled))
    return Recommendations(prediction.items, scores, sampled)


# ----------------------------------------------------------------------------
# The task adapter
# ----------------------------------------------------------------------------


class RecommendationTask:
    """Prediction handling of ``sequential_recommendation`` (the adapter methods of :mod:`harness.tasks`)."""

    fold_blendable = False  # each run's test lists are already its fold models' fusion

    def ranks(self, protocol: str, rows: pd.DataFrame, predictions: Recommendations) -> np.ndarray:
        """Each row target's rank under ``protocol`` (``full`` or ``sampled``), by the convention of
        :mod:`harness.metrics`: counted ranks where the predictions have them, else read off the lists."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        if protocol == "sampled":
            if predictions.sampled is None:
                raise HarnessError("The predictions carry no sampled-candidate scores; the _sampled protocol needs them.")
            if np.isnan(predictions.sampled).any():
                raise HarnessError("The sampled-candidate scores contain NaN; scores must be real numbers.")
            ranks = (predictions.sampled[:, 1:] >= predictions.sampled[:, :1]).sum(axis=1)
            ranks[predictions.sampled[:, 0] == -np.inf] = UNRANKED
        elif predictions.ranks is not None:
            ranks = predictions.ranks.copy()
        else:
            ranks = ranks_from_topn(predictions.items, rows["target"].to_numpy(np.int64), predictions.scores)
        ranks[_target_in_history(rows)] = UNRANKED
        return ranks

    def score(self, metric, dataset, rows: pd.DataFrame, predictions: Recommendations) -> float:
        protocol = "sampled" if metric.name.endswith("_sampled") else "full"
        return float(metric.fn(self.ranks(protocol, rows, predictions)))

    def report(self, dataset, rows: pd.DataFrame, predictions: Recommendations) -> dict[str, float]:
        """Hit/Recall/NDCG/MRR at every K of :data:`REPORT_KS`, for each protocol available."""
        out = ranking_report(self.ranks("full", rows, predictions), REPORT_KS, "full")
        if predictions.sampled is not None:
            out.update(ranking_report(self.ranks("sampled", rows, predictions), REPORT_KS, "sampled"))
        return out

    def baseline(self, dataset, train: pd.DataFrame, valid: pd.DataFrame) -> Recommendations:
        """Most popular items of the fold's training sequences, the row's history masked."""
        n_items = int(dataset.meta["n_items"])
        popularity = popularity_scores(training_sequences(train, valid), n_items)
        ranking = full_ranking(lambda rows: popularity.expand(len(rows), -1), valid["history"].tolist(), n_items,
                               targets=valid["target"].to_numpy())  # fmt: skip
        candidates = SampledProtocol.from_dataset(dataset).candidates(valid)
        return Recommendations(ranking.items, ranking.scores, popularity.numpy()[candidates], ranking.ranks)

    def check_folds(self, dataset, folds: pd.DataFrame) -> None:
        """Leakage check of the leave-one-out split: per user, test history = train history + validation item.

        Fold models train on the other folds' users' ``history + target`` and on their own users'
        ``history`` only, so this equality is what keeps every test target, and each fold's
        validation targets, out of that fold's training data.
        """
        train, test = dataset.train, dataset.test
        if not np.array_equal(train["user_id"].to_numpy(), test["user_id"].to_numpy()):
            raise HarnessError(f"{dataset.name}: train and test must list the same users in the same order.")
        for user, history, target, test_history in zip(train["user_id"], train["history"], train["target"],
                                                      test["history"]):  # fmt: skip
            if len(test_history) != len(history) + 1 or test_history[-1] != target or \
                    not np.array_equal(test_history[:-1], history):  # fmt: skip
                raise HarnessError(
                    f"{dataset.name}: user {user}'s test history is not their training history followed by "
                    "their validation item; the leave-one-out split would leak."
                )

    def assemble(self, n_rows: int, parts: Sequence[tuple[np.ndarray, Recommendations]]) -> Recommendations:
        """Out-of-fold predictions: each fold's rows put back at their positions in the training frame."""
        order = np.concatenate([index for index, _ in parts])
        if len(order) != n_rows or len(np.unique(order)) != n_rows:
            raise ValueError("fold parts must cover every training row exactly once")
        stacked = Recommendations.concat([prediction for _, prediction in parts])
        return stacked.take(np.argsort(order, kind="stable"))

    def average(self, predictions: Sequence[Recommendations]) -> Recommendations:
        return fuse(predictions, method="mean")

    def take(self, predictions: Recommendations, index: np.ndarray) -> Recommendations:
        return predictions.take(index)

    def to_frame(self, ids: pd.Series, predictions: Recommendations, name: str = "prediction") -> pd.DataFrame:
        columns = {f"{name}_items": list(predictions.items), f"{name}_scores": list(predictions.scores)}
        if predictions.sampled is not None:
            columns[f"{name}_sampled"] = list(predictions.sampled)
        if predictions.ranks is not None:
            columns[f"{name}_rank"] = predictions.ranks
        return pd.DataFrame({"id": ids.to_numpy(), **columns})

    def from_frame(self, frame: pd.DataFrame, name: str = "prediction") -> Recommendations | None:
        """The predictions :meth:`to_frame` wrote under ``name``, or ``None`` if the frame has none."""
        if f"{name}_items" not in frame.columns:
            return None
        sampled, rank = f"{name}_sampled", f"{name}_rank"
        return Recommendations(np.stack(frame[f"{name}_items"]), np.stack(frame[f"{name}_scores"]),
                               np.stack(frame[sampled]) if sampled in frame.columns else None,
                               frame[rank].to_numpy() if rank in frame.columns else None)  # fmt: skip

    def blend(self, method: str, oofs: Sequence[Recommendations], tests: Sequence[Recommendations], *,
              weights=None, **context) -> tuple[Recommendations, Recommendations, list[float] | None]:  # fmt: skip
        """``mean`` / ``weighted_mean`` fuse min-max-scaled scores over the union of candidates,
        ``rank_mean`` is reciprocal-rank fusion (see :func:`fuse`)."""
        if method not in ("mean", "weighted_mean", "rank_mean"):
            raise HarnessError(
                f"Recommendation runs blend with mean, weighted_mean or rank_mean (reciprocal-rank fusion), not {method!r}."
            )
        if isinstance(weights, str):
            raise HarnessError("--weights optimize is for row-wise predictions; give recommendation runs explicit weights.")
        w = None if weights is None else normalise_weights(weights, len(oofs))
        how = "rrf" if method == "rank_mean" else "mean"
        fused = [fuse(members, w, method=how, normalise=True) for members in (oofs, tests)]
        return fused[0], fused[1], None if w is None else [float(x) for x in w]

    def submission(self, dataset, ids: pd.Series, predictions: Recommendations) -> pd.DataFrame:
        """``user_id, items``: raw user id and the top :data:`SUBMISSION_K` raw item ids, space-separated."""
        raw_item = _raw_item_ids(dataset)
        top = predictions.items[:, :SUBMISSION_K]
        lists = [" ".join(raw_item[row[row != 0]]) for row in top]
        return pd.DataFrame({"user_id": _raw_user_ids(dataset, ids), "items": lists})

    def submission_keys(self, dataset) -> pd.Series:
        """A submission's first column: each test row's raw user id (the index: the test rows)."""
        raw = _raw_user_ids(dataset, dataset.test["user_id"])
        return pd.Series(raw, index=dataset.test.index, name="user_id").astype(str)

    def read_submission(self, dataset, frame: pd.DataFrame, source: str) -> Recommendations:
        """The lists of a file in the format of :meth:`submission`, in the order of :meth:`submission_keys`.

        A file's list is closed: it states its items in order and nothing after them, so a target
        in its last place counts there (unlike the open end of a model's full top-N list). A
        format violation is a one-line error naming ``source``, the row and column.
        """
        check_header(frame, ["user_id", "items"], source)
        rows = match_rows(frame, self.submission_keys(dataset), source, "test user", dataset.name)
        catalogue = {raw: item for item, raw in enumerate(_raw_item_ids(dataset)) if item}  # 0 is padding
        lists = parse_lists(frame, "items", catalogue, source, f"an item of the catalogue of {dataset.name}",
                            SUBMISSION_K)  # fmt: skip
        items = np.zeros((len(rows), SUBMISSION_K + 1), np.int64)  # at least one padding id closes each list
        scores = np.full(items.shape, -np.inf, np.float32)
        for out, row in enumerate(rows):
            items[out, : len(lists[row])], scores[out, : len(lists[row])] = lists[row], -np.arange(len(lists[row]))
        return Recommendations(items, scores)

    def check_submission_metric(self, dataset, metric) -> None:
        """A submission lists items: ``_full`` metrics score it; the sampled protocol needs candidate scores."""
        if metric.name.endswith("_sampled"):
            raise HarnessError(f"A {dataset.name} submission lists items, not the scores of the sampled candidates "
                               f"that {metric.name} ranks: score it with a _full metric "
                               f"(e.g. {metric.name.removesuffix('_sampled')}_full).")  # fmt: skip


def _raw_item_ids(dataset) -> np.ndarray:
    """The dataset's own item id (text) of every item id, at its position (0, padding, stays 0)."""
    items = dataset.meta["items"]
    raw_item = np.zeros(int(dataset.meta["n_items"]), dtype=object)
    raw_column = "raw_item_id" if "raw_item_id" in items else "movie_id"  # Amazon / MQL4GRec, MovieLens
    raw_item[items["item_id"].to_numpy()] = items[raw_column].astype(str).to_numpy()
    return raw_item


def _raw_user_ids(dataset, user_ids: pd.Series) -> np.ndarray:
    users = dataset.meta["users"].set_index("user_id")["raw_user_id"]
    return users.reindex(user_ids.astype(np.int64).to_numpy()).to_numpy()


def _target_in_history(rows: pd.DataFrame) -> np.ndarray:
    """``[len(rows)]`` bool: the row's target is one of its history items (a miss by convention)."""
    histories = [np.asarray(h, np.int64).reshape(-1) for h in rows["history"]]
    lengths = np.fromiter((len(h) for h in histories), np.int64, len(histories))
    if not lengths.sum():
        return np.zeros(len(rows), bool)
    owner = np.repeat(np.arange(len(rows)), lengths)
    hit = np.concatenate(histories) == rows["target"].to_numpy(np.int64)[owner]
    return np.bincount(owner[hit], minlength=len(rows)) > 0


TASK = RecommendationTask()


# ----------------------------------------------------------------------------
# The family base: families score, the core ranks
# ----------------------------------------------------------------------------


def training_sequences(train: pd.DataFrame, valid: pd.DataFrame) -> pd.Series:
    """What a fold's model may learn from: item sequences (oldest first) indexed by ``user_id``.

    Training users contribute ``history + [target]`` (their sequence up to the validation item);
    validation users contribute ``history`` alone, never their validation target; no row holds a
    test target (the test item is the one after the validation item).
    """
    overlap = np.intersect1d(train["user_id"].to_numpy(), valid["user_id"].to_numpy())
    if len(overlap):
        raise HarnessError(f"user {overlap[0]} is in both the training and the validation rows of a fold.")
    sequences = [np.append(np.asarray(h, np.int64), t) for h, t in zip(train["history"], train["target"])]
    sequences += [np.asarray(h, np.int64) for h in valid["history"]]
    users = np.concatenate([train["user_id"].to_numpy(), valid["user_id"].to_numpy()])
    series = pd.Series(sequences, index=pd.Index(users, name="user_id"), dtype=object)
    return series[series.map(len) > 0]


class Recommender(Family):
    """What every recommendation family shares: the fit set-up, prediction and validation scoring.

    A family either scores users x items (:class:`SequentialRecommender`; the core ranks the whole
    catalogue) or decodes ranked lists (:class:`ListRecommender`; the core masks and checks them);
    either way the harness computes every metric, so the numbers are comparable.
    """

    task = TaskType.SEQUENTIAL_RECOMMENDATION
    top_n: int = TOP_N

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        self.n_items = int(ctx.dataset.meta["n_items"])
        self.device = torch.device(ctx.device)
        self.protocol = SampledProtocol.from_dataset(ctx.dataset)
        self._dataset = ctx.dataset
        self.fit_recommender(train, valid, ctx)

    @abc.abstractmethod
    def fit_recommender(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        """Train on :func:`training_sequences` ``(train, valid)`` (and side information); early-stop on
        :meth:`validation_score` ``(valid, ctx)``."""

    def predict(self, part: pd.DataFrame) -> Recommendations:
        """Top-N unseen items per row, the target's rank (where ``part`` has targets), and the sampled
        candidates' scores where the family can score candidates."""
        return self._predict(part, n=self.top_n, full=True, sampled=True)

    def validation_score(self, valid: pd.DataFrame, ctx: FitContext) -> float:
        """``ctx.metric`` of this model's predictions for ``valid``, as the CV runner computes it.

        Only what the metric needs is computed: the targets' ranks for a ``_full`` metric, the
        candidates' scores for a ``_sampled`` one.
        """
        sampled = ctx.metric.name.endswith("_sampled")
        prediction = self._predict(valid, n=0, full=not sampled, sampled=sampled)
        return TASK.score(ctx.metric, ctx.dataset, valid, prediction)

    @abc.abstractmethod
    def _predict(self, part: pd.DataFrame, n: int, full: bool, sampled: bool) -> Recommendations:
        """Lists of ``n`` items (0: only the ranks) with ``full``, sampled scores with ``sampled``."""

    def _eval_mode(self) -> None:
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.eval()


class SequentialRecommender(Recommender):
    """A family that scores every item for a user; the core turns scores into rankings.

    Subclasses implement :meth:`fit_recommender` and :meth:`score`; they may override
    :meth:`score_candidates` when scoring a few items is much cheaper than scoring all.
    """

    @abc.abstractmethod
    def score(self, part: pd.DataFrame) -> torch.Tensor:
        """``[len(part), n_items]`` scores of every item as each row's next item (higher is better)."""

    def score_candidates(self, part: pd.DataFrame, candidates: torch.Tensor) -> torch.Tensor:
        """``[len(part), C]`` scores of the item ids ``candidates`` ``[len(part), C]``."""
        return self.score(part).gather(1, candidates.to(self.device))

    @torch.no_grad()
    def _predict(self, part: pd.DataFrame, n: int, full: bool, sampled: bool) -> Recommendations:
        self._eval_mode()
        part = part.reset_index(drop=True)
        source = f"{type(self).__name__}.score"
        items, scores, ranks = np.zeros((len(part), 0), np.int64), np.zeros((len(part), 0), np.float32), None
        candidates = self.protocol.candidates(part) if sampled else None
        candidate_scores = None
        if full:  # the sampled candidates' scores come from the same pass over the full scores
            ranking = full_ranking(
                lambda rows: self.score(part.iloc[rows]), part["history"].tolist(), self.n_items,
                targets=part["target"].to_numpy() if "target" in part else None, n=n, device=self.device,
                row_ids=part["user_id"].tolist(), source=source, gather=candidates,
            )  # fmt: skip
            items, scores, ranks, candidate_scores = ranking.items, ranking.scores, ranking.ranks, ranking.gathered
        elif sampled:
            candidates = torch.as_tensor(candidates)
            batch = max(1, 2**20 // candidates.shape[1])
            candidate_scores = torch.cat([
                self.score_candidates(part.iloc[start : start + batch], candidates[start : start + batch]).float().cpu()
                for start in range(0, len(part), batch)
            ])  # fmt: skip
            if has_nan(candidate_scores):
                raise HarnessError(f"{type(self).__name__}.score_candidates returned NaN scores; scores must be real "
                                   "numbers (-inf masks an item).")  # fmt: skip
            candidate_scores = candidate_scores.numpy()
        return Recommendations(items, scores, candidate_scores, ranks)


class ListRecommender(Recommender):
    """A family that decodes a ranked list per user (a generative recommender) instead of scoring items.

    Subclasses implement :meth:`fit_recommender` and :meth:`recommend`. The core drops from each
    list the items of the row's history (and repeats and padding), keeps the first
    :attr:`list_length`, checks ids and scores, and reads the target's rank off the list: an item
    the list does not hold ranks below it, so Hit/NDCG@K are exact for K up to the list's length
    and a miss beyond it. Such a family reports ``_full`` metrics only: it cannot score the
    sampled protocol's candidates, and asking for a ``_sampled`` metric is an error.
    """

    list_length: int = 20  # items kept per row after masking

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        name = type(self).__name__
        if ctx.metric.name.endswith("_sampled"):
            raise HarnessError(f"{name} decodes ranked lists and reports _full metrics only; --metric "
                               f"{ctx.metric.name} needs scores of sampled candidates.")  # fmt: skip
        largest = max([*REPORT_KS, *(int(k) for k in re.findall(r"@(\d+)", ctx.metric.name))])
        if self.list_length < largest:
            warnings.warn(f"{name} lists {self.list_length} items per user: a metric@K with K > {self.list_length} "
                          "counts every target beyond the list as a miss.", stacklevel=2)  # fmt: skip
        super().fit(train, valid, ctx)

    @abc.abstractmethod
    def recommend(self, part: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(items [len(part), L], scores [len(part), L])``: each row's ranked list, best first, scores
        non-increasing, 0 padding. Return more than ``n`` where possible (``L >= n``): the core
        drops the history's items before keeping ``n``."""

    @torch.no_grad()
    def _predict(self, part: pd.DataFrame, n: int, full: bool, sampled: bool) -> Recommendations:
        if sampled and not full:
            raise HarnessError(f"{type(self).__name__} decodes ranked lists and cannot score the _sampled "
                               "protocol's candidates; use a _full metric.")  # fmt: skip
        self._eval_mode()
        part = part.reset_index(drop=True)
        n = self.list_length if n == 0 else min(n, self.list_length)
        raw_items, raw_scores = self.recommend(part, n)
        # one entry past the kept list, so that a target in its last place is known not to tie beyond it
        items, scores = mask_lists(raw_items, raw_scores, part["history"].tolist(), self.n_items, n + 1,
                                   source=f"{type(self).__name__}.recommend", row_ids=part["user_id"].tolist())  # fmt: skip
        ranks = None
        if "target" in part:
            ranks = ranks_from_topn(items, part["target"].to_numpy(np.int64), scores)
            ranks[ranks >= n] = UNRANKED
        return Recommendations(items[:, :n], scores[:, :n], None, ranks)


def mask_lists(items, scores, histories: Sequence[np.ndarray], n_items: int, n: int, *, source: str,
               row_ids: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each row's list without its history's items, repeats and padding, cut to ``n`` (0-padded).

    Bad lists are one-line errors naming ``source`` and the row: a shape that is not ``[B, L]``,
    an id outside ``[1, n_items)``, a NaN score, or scores that rise along a row.
    """
    items, scores = np.asarray(items), np.asarray(scores, dtype=np.float32)
    if items.ndim != 2 or items.shape != scores.shape or len(items) != len(histories):
        raise HarnessError(f"{source} must return items and scores of shape [{len(histories)}, L], got "
                           f"{items.shape} and {scores.shape}.")  # fmt: skip
    if items.dtype.kind not in "iu":
        raise HarnessError(f"{source} must return integer item ids, got dtype {items.dtype}.")
    label = (lambda row: f"user {row_ids[row]}") if row_ids is not None else (lambda row: f"row {row}")
    real = items != 0
    bad = real & ((items < 0) | (items >= n_items))
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise HarnessError(f"{source} listed item {int(items[bad][0])} for {label(row)}; item ids are 1..{n_items - 1}.")
    if np.isnan(scores[real]).any():
        row = int(np.flatnonzero((np.isnan(scores) & real).any(1))[0])
        raise HarnessError(f"{source} returned a NaN score for {label(row)}; scores must be real numbers.")
    out_items, out_scores = np.zeros((len(items), n), np.int64), np.full((len(items), n), -np.inf, np.float32)
    for row, (ids, values, history) in enumerate(zip(items, scores, histories)):
        keep = ids != 0
        ids, values = ids[keep], values[keep]
        if (np.diff(values) > 0).any():
            raise HarnessError(f"{source} returned rising scores for {label(row)}; lists must be best first.")
        _, first = np.unique(ids, return_index=True)
        first = np.sort(first)
        ids, values = ids[first], values[first]
        unseen = ~np.isin(ids, np.asarray(history, np.int64))
        ids, values = ids[unseen][:n], values[unseen][:n]
        out_items[row, : len(ids)], out_scores[row, : len(ids)] = ids, values
    return out_items, out_scores


def pad_left(sequences: list[np.ndarray], max_len: int) -> torch.Tensor:
    """``[len(sequences), max_len]`` item ids: each sequence's last ``max_len`` items, right-aligned,
    left-padded with 0, so position ``-1`` always holds the most recent item."""
    out = torch.zeros((len(sequences), max_len), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tail = np.asarray(sequence, np.int64)[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = torch.from_numpy(tail)
    return out

"""Sequential recommendation in the core: the prediction type, full ranking, sampled candidates, scoring.

A prediction of the ``sequential_recommendation`` task is a :class:`Recommendations`: for each
user, the top-N items over the whole catalogue with the user's history masked (best first, with
scores) -- the submission -- and, for the ``_sampled`` protocol, the scores of a fixed candidate
set: the row's target and ``n`` sampled negatives. Families never rank: they score users × items
(:class:`harness.recommender.SequentialRecommender`), and :func:`top_n` here masks and ranks in
memory-bounded batches on the family's device, so every family is evaluated the same way.

Full-ranking ranks are positions inside the top-N list (:func:`harness.metrics.ranks_from_topn`),
exact for every metric@K with K <= N; a target outside the list is a miss. Sampled ranks count the
negatives scoring at least the target's score (ties pessimistic, as in
:func:`harness.metrics.target_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from harness.errors import HarnessError
from harness.metrics import ranking_report, ranks_from_topn, sample_negatives

__all__ = [
    "TOP_N",
    "REPORT_KS",
    "SUBMISSION_K",
    "Recommendations",
    "SampledProtocol",
    "top_n",
    "item_counts",
    "popularity_scores",
    "fuse",
    "RankingTask",
]

TOP_N = 50  # items kept per user: above the largest reported K, with room for fusing fold models
REPORT_KS = (5, 10, 20)  # the Ks of every ranking report
SUBMISSION_K = 20  # items per user in the submission file
MAX_SCORE_ELEMENTS = 2**24  # scores held at once while ranking (64 MiB of float32)


@dataclass
class Recommendations:
    """Per row (user): the top-N items with their scores, and the sampled-protocol scores.

    ``items`` ``[B, N]`` int64 item ids, best first (0, the padding id, fills rows whose unmasked
    catalogue is shorter than N); ``scores`` ``[B, N]`` float32, non-increasing along each row;
    ``sampled`` ``[B, 1 + n_negatives]`` float32 scores of the row's target (column 0) and its
    negatives, or ``None`` when not computed.
    """

    items: np.ndarray
    scores: np.ndarray
    sampled: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.items.ndim != 2 or self.items.shape != self.scores.shape:
            raise ValueError(f"items and scores must both be [B, N], got {self.items.shape} and {self.scores.shape}")
        if self.sampled is not None:
            self.sampled = np.asarray(self.sampled, dtype=np.float32)
            if self.sampled.ndim != 2 or len(self.sampled) != len(self.items):
                raise ValueError(f"sampled must be [B, 1 + n_negatives] with B={len(self.items)}, got {self.sampled.shape}")

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray) -> "Recommendations":
        sampled = None if self.sampled is None else self.sampled[index]
        return Recommendations(self.items[index], self.scores[index], sampled)

    @classmethod
    def concat(cls, parts: Sequence["Recommendations"]) -> "Recommendations":
        sampled = None if any(p.sampled is None for p in parts) else np.concatenate([p.sampled for p in parts])
        return cls(np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts]), sampled)


# ----------------------------------------------------------------------------
# Ranking over the whole catalogue
# ----------------------------------------------------------------------------


def top_n(
    score_fn: Callable[[np.ndarray], torch.Tensor | np.ndarray],
    histories: Sequence[np.ndarray],
    n_items: int,
    n: int = TOP_N,
    *,
    device: torch.device | str = "cpu",
    max_elements: int = MAX_SCORE_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` items per row over all items, the padding id 0 and the row's history masked.

    ``score_fn(rows)`` scores the rows at positions ``rows`` against every item: ``[len(rows),
    n_items]``. Rows are batched so that one batch's score matrix holds at most ``max_elements``
    values; masking and ``torch.topk`` run on ``device``. Returns ``(items, scores)``, each
    ``[len(histories), n]`` (``n`` is capped at ``n_items - 1``).
    """
    n_rows = len(histories)
    if n_rows == 0:
        raise ValueError("histories is empty")
    n = min(int(n), n_items - 1)
    device = torch.device(device)
    batch = max(1, min(n_rows, max_elements // n_items))
    items, scores = np.zeros((n_rows, n), np.int64), np.zeros((n_rows, n), np.float32)
    with torch.no_grad():
        for start in range(0, n_rows, batch):
            rows = np.arange(start, min(start + batch, n_rows))
            s = torch.as_tensor(score_fn(rows)).to(device=device, dtype=torch.float32)
            if tuple(s.shape) != (len(rows), n_items):
                raise ValueError(f"score_fn must return [{len(rows)}, {n_items}] scores, got {tuple(s.shape)}")
            s = s.clone()
            s[:, 0] = -torch.inf
            seen = [np.asarray(histories[i], dtype=np.int64) for i in rows]
            row_of = np.repeat(np.arange(len(rows)), [len(h) for h in seen])
            s[torch.as_tensor(row_of, device=device), torch.as_tensor(np.concatenate(seen), device=device)] = -torch.inf
            values, index = torch.topk(s, n, dim=1)
            index[torch.isinf(values)] = 0  # fewer than n unmasked items: pad with the padding id
            items[rows], scores[rows] = index.cpu().numpy(), values.cpu().numpy()
    return items, scores


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
        """``[len(part), 1 + n_negatives]`` item ids: the target, then the negatives."""
        out = np.empty((len(part), 1 + self.n_negatives), np.int64)
        for row, (user, target, history) in enumerate(zip(part["user_id"], part["target"], part["history"])):
            row_seed = int(np.random.SeedSequence([self.seed, int(user), int(target)]).generate_state(1)[0])
            excluded = [np.append(np.asarray(history, np.int64), 0)]
            out[row, 0] = target
            out[row, 1:] = sample_negatives(
                np.array([target], np.int64), self.n_items, excluded, n_negatives=self.n_negatives,
                sampling=self.sampling, item_popularity=self.popularity, seed=row_seed,
            )[0]  # fmt: skip
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


class RankingTask:
    """Prediction handling of ``sequential_recommendation`` (see :class:`harness.tasks.RowwiseTask`)."""

    def ranks(self, protocol: str, rows: pd.DataFrame, predictions: Recommendations) -> np.ndarray:
        if protocol == "sampled":
            if predictions.sampled is None:
                raise HarnessError("The predictions carry no sampled-candidate scores; the _sampled protocol needs them.")
            return (predictions.sampled[:, 1:] >= predictions.sampled[:, :1]).sum(axis=1)
        return ranks_from_topn(predictions.items, rows["target"].to_numpy(np.int64))

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
        from harness.recommender import training_sequences

        n_items = int(dataset.meta["n_items"])
        popularity = popularity_scores(training_sequences(train, valid), n_items)
        histories = valid["history"].tolist()
        items, scores = top_n(lambda rows: popularity.expand(len(rows), -1), histories, n_items)
        candidates = SampledProtocol.from_dataset(dataset).candidates(valid)
        return Recommendations(items, scores, popularity.numpy()[candidates])

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

    def to_frame(self, ids: pd.Series, predictions: Recommendations, name: str = "prediction") -> pd.DataFrame:
        columns = {f"{name}_items": list(predictions.items), f"{name}_scores": list(predictions.scores)}
        if predictions.sampled is not None:
            columns[f"{name}_sampled"] = list(predictions.sampled)
        return pd.DataFrame({"id": ids.to_numpy(), **columns})

    def submission(self, dataset, ids: pd.Series, predictions: Recommendations) -> pd.DataFrame:
        """``user_id, items``: raw user id and the top :data:`SUBMISSION_K` raw item ids, space-separated."""
        items = dataset.meta["items"]
        raw_item = np.zeros(int(dataset.meta["n_items"]), dtype=object)
        raw_item[items["item_id"].to_numpy()] = items["movie_id"].astype(str).to_numpy()
        users = dataset.meta["users"].set_index("user_id")["raw_user_id"]
        top = predictions.items[:, :SUBMISSION_K]
        lists = [" ".join(raw_item[row[row != 0]]) for row in top]
        raw_users = users.reindex(ids.astype(np.int64).to_numpy()).to_numpy()
        return pd.DataFrame({"user_id": raw_users, "items": lists})

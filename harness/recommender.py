"""The base of sequential-recommendation families: they score users × items, the core ranks.

A family subclasses :class:`SequentialRecommender`, trains in :meth:`~SequentialRecommender.fit_recommender`
on what :func:`training_sequences` allows, and implements :meth:`~SequentialRecommender.score`.
Prediction (full ranking with the history masked, the sampled protocol's candidate scores) and
validation scoring are the same for every family, so their numbers are comparable.

Rows of the frames are users: ``user_id``, ``history`` (item ids, oldest first), ``target`` (the
next item) and ``user_text``; ``dataset.meta`` has ``n_items`` (0 is padding) and ``items``.
"""

from __future__ import annotations

import abc

import numpy as np
import pandas as pd
import torch

from harness.errors import HarnessError
from harness.metrics import has_nan
from harness.ranking import TOP_N, Recommendations, SampledProtocol, full_ranking
from harness.registry import Family, FitContext
from harness.tasks import TaskType, get_task_adapter

__all__ = ["SequentialRecommender", "training_sequences", "pad_left"]


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


class SequentialRecommender(Family):
    """A family that scores every item for a user; the core turns scores into rankings.

    Subclasses implement :meth:`fit_recommender` and :meth:`score`; they may override
    :meth:`score_candidates` when scoring a few items is much cheaper than scoring all.
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

    @abc.abstractmethod
    def score(self, part: pd.DataFrame) -> torch.Tensor:
        """``[len(part), n_items]`` scores of every item as each row's next item (higher is better)."""

    def score_candidates(self, part: pd.DataFrame, candidates: torch.Tensor) -> torch.Tensor:
        """``[len(part), C]`` scores of the item ids ``candidates`` ``[len(part), C]``."""
        return self.score(part).gather(1, candidates.to(self.device))

    def predict(self, part: pd.DataFrame) -> Recommendations:
        """Top-N unseen items per row over the whole catalogue, the target's rank among all candidate
        items (where ``part`` has targets), and the sampled candidates' scores."""
        return self._predict(part, n=self.top_n, full=True, sampled=True)

    def validation_score(self, valid: pd.DataFrame, ctx: FitContext) -> float:
        """``ctx.metric`` of this model's predictions for ``valid``, as the CV runner computes it.

        Only what the metric needs is computed: the targets' counted ranks for a ``_full`` metric
        (no top-N lists), the candidates' scores for a ``_sampled`` one.
        """
        sampled = ctx.metric.name.endswith("_sampled")
        prediction = self._predict(valid, n=0, full=not sampled, sampled=sampled)
        return get_task_adapter(self.task).score(ctx.metric, ctx.dataset, valid, prediction)

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

    def _eval_mode(self) -> None:
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.eval()


def pad_left(sequences: list[np.ndarray], max_len: int) -> torch.Tensor:
    """``[len(sequences), max_len]`` item ids: each sequence's last ``max_len`` items, right-aligned,
    left-padded with 0, so position ``-1`` always holds the most recent item."""
    out = torch.zeros((len(sequences), max_len), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tail = np.asarray(sequence, np.int64)[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = torch.from_numpy(tail)
    return out

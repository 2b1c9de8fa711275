"""Most-popular baseline: every user gets the items with the most training interactions.

The anchor of the sequential-recommendation leaderboard: a family that cannot beat it has learned
nothing about users. ``window`` counts only each sequence's last items, a "trending now" variant
that follows drifting tastes. Ties go to the lower item id, so rankings are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from harness.config import NON_NEGATIVE, check_fields
from harness.tasks.recommendation import SequentialRecommender, popularity_scores, training_sequences
from harness.registry import FitContext, register_model
from harness.tasks import TaskType

__all__ = ["PopularityConfig", "Popularity", "popularity", "search_space"]


@dataclass
class PopularityConfig:
    window: int = 0  # count only the last `window` items of each training sequence; 0: all of them


class Popularity(SequentialRecommender):
    def __init__(self, config: PopularityConfig):
        self.config = config

    def fit_recommender(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        sequences = training_sequences(train, valid)
        if self.config.window:
            sequences = [s[-self.config.window :] for s in sequences]
        self.popularity = popularity_scores(sequences, self.n_items)
        ctx.log_metrics({f"valid_{ctx.metric.name}": self.validation_score(valid, ctx)}, 1)

    def score(self, part: pd.DataFrame) -> torch.Tensor:
        return self.popularity.to(self.device).expand(len(part), -1)


def search_space(trial) -> dict[str, Any]:
    return {"model": {"window": trial.suggest_categorical("model.window", [0, 5, 10, 20, 50])}}


@register_model("popularity", task=TaskType.SEQUENTIAL_RECOMMENDATION, config=PopularityConfig,
                dataset="movielens", search_space=search_space)  # fmt: skip
def popularity(config: PopularityConfig) -> Popularity:
    """Most-popular unseen items (baseline)."""
    check_fields(config, NON_NEGATIVE, "window")
    return Popularity(config)

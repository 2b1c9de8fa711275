"""Task types: each decides the shape of a prediction, how it is scored and how it is blended."""

from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd


class TaskType(str, Enum):
    """The four kinds of competition the harness runs.

    ============================  =============================================  ==================
    task                          prediction per row                             metrics
    ============================  =============================================  ==================
    ``regression``                one float, original scale                      MSE, MSLE, RMSLE
    ``classification``            class probabilities ``[C]``                    accuracy, top-k
    ``sequential_recommendation`` top-N item ids (+ scores) per user             Hit/NDCG/MRR@K
    ``reid``                      an embedding per image (query and gallery)     mAP, CMC Rank-k
    ============================  =============================================  ==================
    """

    REGRESSION = "regression"
    CLASSIFICATION = "classification"
    SEQUENTIAL_RECOMMENDATION = "sequential_recommendation"
    REID = "reid"

    @property
    def metric_task(self) -> str:
        """The metric engine's name for this task's metrics (see :mod:`harness.metrics`)."""
        return "ranking" if self is TaskType.SEQUENTIAL_RECOMMENDATION else self.value


class RowwiseTask:
    """Prediction handling for tasks with one prediction per row of a frame.

    The CV runner asks the task adapter, never the family, how to score predictions, average
    the fold models' test predictions, store them with ids and write the submission. A new task
    type plugs in by registering an adapter with the same methods in :data:`TASK_ADAPTERS`.
    """

    def score(self, metric, dataset, rows: pd.DataFrame, predictions: np.ndarray) -> float:
        return float(metric.fn(rows[dataset.target_col].to_numpy(), predictions))

    def baseline(self, dataset, train: pd.DataFrame, valid: pd.DataFrame) -> np.ndarray:
        """A trivial prediction for ``valid`` learned from ``train`` alone, to read scores against."""
        raise NotImplementedError

    def report(self, dataset, rows: pd.DataFrame, predictions: np.ndarray) -> dict[str, float]:
        """Further metrics shown beside the run's own (none for row-wise tasks)."""
        return {}

    def check_folds(self, dataset, folds: pd.DataFrame) -> None:
        """Task-specific leakage checks of a fold assignment (row-wise folds need none beyond ids)."""

    def assemble(self, n_rows: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Out-of-fold predictions: each fold's predictions put back at its rows' positions."""
        first = np.asarray(parts[0][1])
        out = np.empty((n_rows, *first.shape[1:]), dtype=first.dtype if first.dtype.kind == "f" else float)
        for index, predictions in parts:
            out[index] = predictions
        return out

    def average(self, predictions: list[np.ndarray]) -> np.ndarray:
        return np.mean(np.stack(predictions), axis=0)

    def to_frame(self, ids: pd.Series, predictions: np.ndarray, name: str = "prediction") -> pd.DataFrame:
        values = np.asarray(predictions)
        if values.ndim == 1:
            return pd.DataFrame({"id": ids.to_numpy(), name: values})
        columns = {f"{name}_{c}": values[:, c] for c in range(values.shape[1])}
        return pd.DataFrame({"id": ids.to_numpy(), **columns})

    def submission(self, dataset, ids: pd.Series, predictions: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"id": ids.to_numpy(), dataset.target_col: np.asarray(predictions)})


class RegressionTask(RowwiseTask):
    def baseline(self, dataset, train, valid):
        # For a non-negative target, the constant that minimises MSLE on the training rows
        # (expm1 of the mean of log1p); otherwise the mean, which minimises MSE.
        target = train[dataset.target_col].to_numpy(dtype=float)
        constant = np.expm1(np.log1p(target).mean()) if target.min() >= 0 else target.mean()
        return np.full(len(valid), constant)


class ClassificationTask(RowwiseTask):
    def baseline(self, dataset, train, valid):
        # Class frequencies of the training rows, for every validation row.
        labels = train[dataset.target_col].to_numpy()
        n_classes = int(dataset.meta.get("n_classes", labels.max() + 1))
        prior = np.bincount(labels, minlength=n_classes) / len(labels)
        return np.tile(prior, (len(valid), 1))

    def submission(self, dataset, ids, predictions):
        labels = np.asarray(predictions).argmax(axis=1)
        classes = dataset.meta.get("classes")
        if classes is not None:
            labels = np.asarray(classes)[labels]
        return pd.DataFrame({"id": ids.to_numpy(), dataset.target_col: labels})


from harness.ranking import RankingTask  # noqa: E402  (depends on the metric engine only)

TASK_ADAPTERS: dict[TaskType, RowwiseTask | RankingTask] = {
    TaskType.REGRESSION: RegressionTask(),
    TaskType.CLASSIFICATION: ClassificationTask(),
    TaskType.SEQUENTIAL_RECOMMENDATION: RankingTask(),
}


def get_task_adapter(task: TaskType):
    if task not in TASK_ADAPTERS:
        raise NotImplementedError(f"No prediction adapter is registered for task {task.value!r}.")
    return TASK_ADAPTERS[task]

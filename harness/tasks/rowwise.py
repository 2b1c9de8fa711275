"""Tasks with one prediction per row of a frame: a value (regression) or a vector (class probabilities)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from harness import blending
from harness.submissions import check_header, match_rows

__all__ = ["RowwiseTask"]


class RowwiseTask:
    """Prediction handling for tasks whose prediction is an array with one entry per row.

    Predictions are ``[N]`` (one value) or ``[N, C]`` arrays. Subclasses state the task's
    baseline, submission and how a submission's values read back (``_parse``); scoring, assembly,
    averaging, storage, blending and the submission's rows are shared.
    """

    fold_blendable = True  # the fold models' test predictions blend row by row (ensemble --fold-models)

    def score(self, metric, dataset, rows: pd.DataFrame, predictions: np.ndarray) -> float:
        return float(metric.fn(rows[dataset.target_col].to_numpy(), predictions))

    def baseline(self, dataset, train: pd.DataFrame, valid: pd.DataFrame) -> np.ndarray:
        """A trivial prediction for ``valid`` learned from ``train`` alone, to read scores against."""
        raise NotImplementedError

    def report(self, dataset, rows: pd.DataFrame, predictions: np.ndarray) -> dict[str, float]:
        """Further metrics shown beside the run's own (none unless the task has a standard set)."""
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

    def take(self, predictions: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.asarray(predictions)[index]

    def to_frame(self, ids: pd.Series, predictions: np.ndarray, name: str = "prediction") -> pd.DataFrame:
        """``id`` and ``name`` (one value) or ``name_0 .. name_{C-1}`` (a vector per row)."""
        values = np.asarray(predictions)
        if values.ndim == 1:
            return pd.DataFrame({"id": ids.to_numpy(), name: values})
        columns = {f"{name}_{c}": values[:, c] for c in range(values.shape[1])}
        return pd.DataFrame({"id": ids.to_numpy(), **columns})

    def from_frame(self, frame: pd.DataFrame, name: str = "prediction") -> np.ndarray | None:
        """The predictions :meth:`to_frame` wrote under ``name``, or ``None`` if the frame has none."""
        if name in frame.columns:
            return frame[name].to_numpy(dtype=float)
        pattern = re.compile(rf"{re.escape(name)}_(\d+)")
        columns = sorted((c for c in frame.columns if pattern.fullmatch(str(c))), key=lambda c: int(str(c)[len(name) + 1 :]))
        return frame[columns].to_numpy(dtype=float) if columns else None

    def blend(self, method: str, oofs: list[np.ndarray], tests: list[np.ndarray], *, dataset, rows: pd.DataFrame,
              metric, folds: np.ndarray, weights=None, stacker: str = "ridge", seed: int = 42):  # fmt: skip
        """``(oof, test, weights applied or None)`` of :func:`harness.blending.blend` on the members."""
        return blending.blend(
            method, np.stack(oofs), np.stack(tests), y=rows[dataset.target_col].to_numpy(), folds=folds,
            score=lambda p: self.score(metric, dataset, rows, p), greater_is_better=metric.greater_is_better,
            weights=weights, stacker=stacker, log_space=metric.name in blending.LOG_SPACE_METRICS, seed=seed,
        )  # fmt: skip

    def submission(self, dataset, ids: pd.Series, predictions: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"id": ids.to_numpy(), dataset.target_col: np.asarray(predictions)})

    def submission_keys(self, dataset) -> pd.Series:
        """A submission's first column: one test id per test row (the index), in the test rows' order."""
        return dataset.test[dataset.id_col].astype(str).rename("id")

    def read_submission(self, dataset, frame: pd.DataFrame, source: str) -> np.ndarray:
        """The predictions of a file in the format of :meth:`submission`, in the order of
        :meth:`submission_keys`; a format violation is a one-line error naming ``source``, the row and column."""
        check_header(frame, ["id", dataset.target_col], source)
        rows = match_rows(frame, self.submission_keys(dataset), source, "test id", dataset.name)
        return self._parse(dataset, frame, source)[rows]

    def _parse(self, dataset, frame: pd.DataFrame, source: str) -> np.ndarray:
        """The predictions of the prediction column, in the file's row order."""
        raise NotImplementedError

    def check_submission_metric(self, dataset, metric) -> None:
        """Refuse a metric that a submission file cannot be scored with (here: none)."""

    def with_targets(self, dataset, truth: np.ndarray) -> pd.DataFrame:
        """The test rows with the targets ``truth`` states: a labels file read by :meth:`read_submission`."""
        values = np.asarray(truth)
        return dataset.test.assign(**{dataset.target_col: values if values.ndim == 1 else values.argmax(axis=1)})

"""The ``regression`` task: one float per row on the target's original scale (MSE, MSLE, RMSLE)."""

from __future__ import annotations

import numpy as np

from harness.submissions import parse_numbers
from harness.tasks.rowwise import RowwiseTask

__all__ = ["RegressionTask", "TASK"]


class RegressionTask(RowwiseTask):
    def baseline(self, dataset, train, valid):
        # For a non-negative target, the constant that minimises MSLE on the training rows
        # (expm1 of the mean of log1p); otherwise the mean, which minimises MSE.
        target = train[dataset.target_col].to_numpy(dtype=float)
        constant = np.expm1(np.log1p(target).mean()) if target.min() >= 0 else target.mean()
        return np.full(len(valid), constant)

    def _parse(self, dataset, frame, source):
        """Finite numbers, at least the dataset's ``meta["target_min"]`` where it declares one (views: 0)."""
        return parse_numbers(frame, dataset.target_col, source, minimum=dataset.meta.get("target_min"))


TASK = RegressionTask()

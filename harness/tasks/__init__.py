"""Task types, each with one home: prediction type, scoring, baseline, fold checks, blending, submission.

This module only names the task types and finds each one's adapter; the adapters live one module
per task type (:mod:`harness.tasks.regression`, :mod:`~harness.tasks.classification`,
:mod:`~harness.tasks.recommendation`, :mod:`~harness.tasks.retrieval`, :mod:`~harness.tasks.reid`), with the family base
class of that task where it has one. Nothing here imports them, so any module of the core can
import :class:`TaskType` without importing a task's dependencies, and no harness import runs in a
circle. The CV runner, the ensembler and the submission writer ask the adapter, never the family.

An adapter (a :class:`harness.tasks.rowwise.RowwiseTask` or one with the same methods) answers:

* ``score(metric, dataset, rows, predictions)`` and ``report(...)``: the metric engine on the rows;
* ``baseline(dataset, train, valid)``: a trivial prediction to read scores against;
* ``check_folds(dataset, folds)``: task-specific leakage checks of a fold assignment;
* ``assemble``, ``average``, ``take``: out-of-fold assembly, fold-model averaging, row selection;
* ``to_frame`` / ``from_frame``: predictions as parquet columns and back;
* ``blend(method, oofs, tests, context)``: the ensemble methods the task supports;
* ``submission(dataset, ids, predictions)``: the submission file's frame, and its way back:
  ``submission_keys(dataset)`` (the file's first column, one key per test row it answers),
  ``read_submission(dataset, frame, source)`` (the format check, then predictions that ``score``
  takes) and ``check_submission_metric(dataset, metric)`` (the metrics such a file can be scored
  with); row-wise tasks also read a labels file in that format (``with_targets``), for test files
  without targets (see :mod:`harness.scoring`).
"""

from __future__ import annotations

from enum import Enum
from importlib import import_module

__all__ = ["TaskType", "get_task_adapter"]


class TaskType(str, Enum):
    """The kinds of competition the harness runs.

    ============================  =============================================  ==================
    task                          prediction per row                             metrics
    ============================  =============================================  ==================
    ``regression``                one float, original scale                      MSE, MSLE, RMSLE
    ``classification``            class probabilities ``[C]``                    accuracy, top-k
    ``sequential_recommendation`` top-N item ids (+ scores) per user             Hit/NDCG/MRR@K
    ``reid``                      an embedding per image (query and gallery)     mAP, CMC Rank-k, mINP
    ``retrieval``                 an image embedding and its captions' ones      Recall@K, rsum, mAP
    ============================  =============================================  ==================
    """

    REGRESSION = "regression"
    CLASSIFICATION = "classification"
    SEQUENTIAL_RECOMMENDATION = "sequential_recommendation"
    REID = "reid"
    RETRIEVAL = "retrieval"

    @property
    def metric_task(self) -> str:
        """The metric engine's name for this task's metrics (see :mod:`harness.metrics`)."""
        return "ranking" if self is TaskType.SEQUENTIAL_RECOMMENDATION else self.value


# The module of each task type's adapter (its ``TASK``), imported on first use.
_ADAPTER_MODULES = {
    TaskType.REGRESSION: "harness.tasks.regression",
    TaskType.CLASSIFICATION: "harness.tasks.classification",
    TaskType.SEQUENTIAL_RECOMMENDATION: "harness.tasks.recommendation",
    TaskType.RETRIEVAL: "harness.tasks.retrieval",
    TaskType.REID: "harness.tasks.reid",
}


def get_task_adapter(task: TaskType):
    """The prediction adapter of ``task``."""
    task = TaskType(task)
    if task not in _ADAPTER_MODULES:
        raise NotImplementedError(f"No prediction adapter is registered for task {task.value!r}.")
    return import_module(_ADAPTER_MODULES[task]).TASK

"""Ensembling finished CV runs: blend their out-of-fold and test predictions.

A *member* is a finished CV run in the MLflow store: its ``oof.parquet`` (``id``, ``prediction``
or ``prediction_0..C-1``, ``fold``), ``test_predictions.parquet`` (``id``, ``fold_<k>`` or
``fold_<k>_<c>``) and ``config.yaml``. Members can be blended only if they share the dataset, the
fold file and the metric and predict the same OOF and test ids; because they share the fold file,
every member's OOF prediction of a row comes from a model that never saw that row, so the blend's
OOF score is an honest CV estimate (up to the optimism of choosing weights or a stacker on the
same OOF rows; stacking refits fold by fold to avoid it).

Blending methods are pure functions on a stack ``P`` of member predictions, shape ``[M, N]``
(regression) or ``[M, N, C]`` (class probabilities), ``M`` members and ``N`` rows:

* :func:`mean`, :func:`median`, :func:`weighted_mean`, :func:`rank_mean`;
* :func:`optimize_weights` chooses simplex weights for :func:`weighted_mean` on the OOF rows;
* :func:`stack` fits a level-2 model (ridge or LightGBM) under the members' own folds.

:func:`run_ensemble` ties it together and logs an MLflow run with the same metric keys as a CV
run (``kind="ensemble"``), so one leaderboard lists both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import minimize
from scipy.stats import rankdata

from harness.errors import HarnessError
from harness.io import atomic_write
from harness.metrics import get_metric
from harness.ranking import Recommendations, fuse
from harness.tracking import metric_key
from harness.tracking import DEFAULT_DIR, Tracker, tracking_uri

__all__ = [
    "METHODS",
    "STACKERS",
    "Member",
    "load_member",
    "top_runs",
    "check_members",
    "mean",
    "median",
    "weighted_mean",
    "normalise_weights",
    "optimize_weights",
    "rank_mean",
    "stack",
    "blend",
    "run_ensemble",
]

METHODS = ("mean", "median", "weighted_mean", "rank_mean", "stacking")
STACKERS = ("ridge", "lightgbm")
LOG_SPACE_METRICS = ("msle", "rmsle")  # metrics computed on log1p: stackers fit on log1p too
_TEST_COLUMN = re.compile(r"fold_(\d+)(?:_(\d+))?")
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


# ----------------------------------------------------------------------------------------------
# Members
# ----------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One finished run, as the ensembler needs it."""

    run_id: str
    run_name: str
    model: str
    dataset: str
    metric: str
    fold_file: str
    tags: dict[str, str]
    oof: pd.DataFrame  # id, prediction | prediction_0..C-1, fold
    test: pd.DataFrame  # id, fold_<k> | fold_<k>_<c> (per fold model) or prediction[_c] (already blended)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.run_id} ({self.model})"

    @property
    def oof_ids(self) -> np.ndarray:
        return self.oof["id"].astype(str).to_numpy()

    @property
    def test_ids(self) -> np.ndarray:
        return self.test["id"].astype(str).to_numpy()

    @property
    def folds(self) -> np.ndarray:
        return self.oof["fold"].to_numpy(dtype=int)

    def oof_values(self) -> np.ndarray:
        """``[N]`` or ``[N, C]`` out-of-fold predictions."""
        return _prediction_values(self.oof, self.label, "oof.parquet")

    def test_values(self) -> np.ndarray | Recommendations:
        """``[T]`` or ``[T, C]`` test predictions (or recommendations): the fold models' averaged."""
        if any(c == "prediction" or c.startswith("prediction_") for c in self.test.columns):
            return _prediction_values(self.test, self.label, "test_predictions.parquet")
        folds = sorted(int(m[1]) for c in self.test.columns if (m := re.fullmatch(r"fold_(\d+)_items", str(c))))
        if folds:
            return fuse([_recommendations(self.test, f"fold_{k}") for k in folds])
        return np.mean(self.fold_test_values(), axis=0)

    def fold_test_values(self) -> np.ndarray:
        """``[K, T]`` or ``[K, T, C]``: each fold model's test predictions."""
        per_fold: dict[int, dict[int, str]] = {}
        for column in self.test.columns:
            match = _TEST_COLUMN.fullmatch(str(column))
            if match:
                c = -1 if match.group(2) is None else int(match.group(2))
                per_fold.setdefault(int(match.group(1)), {})[c] = column
        if not per_fold:
            raise HarnessError(f"Run {self.label}: test_predictions.parquet has no fold_<k> columns.")
        stacks = []
        for k in sorted(per_fold):
            columns = per_fold[k]
            names = [columns[-1]] if -1 in columns else [columns[c] for c in sorted(columns)]
            values = self.test[names].to_numpy(dtype=float)
            stacks.append(values[:, 0] if -1 in columns else values)
        return np.stack(stacks)


def _prediction_values(frame: pd.DataFrame, label: str, file: str) -> np.ndarray | Recommendations:
    if "prediction_items" in frame.columns:
        return _recommendations(frame, "prediction")
    if "prediction" in frame.columns:
        return frame["prediction"].to_numpy(dtype=float)
    columns = sorted((c for c in frame.columns if re.fullmatch(r"prediction_\d+", str(c))), key=lambda c: int(c[11:]))
    if not columns:
        raise HarnessError(f"Run {label}: {file} has no prediction column.")
    return frame[columns].to_numpy(dtype=float)


def _recommendations(frame: pd.DataFrame, prefix: str) -> Recommendations:
    """A recommendation run's ``<prefix>_items|scores|sampled|rank`` columns."""
    sampled, rank = f"{prefix}_sampled", f"{prefix}_rank"
    return Recommendations(np.stack(frame[f"{prefix}_items"]), np.stack(frame[f"{prefix}_scores"]),
                           np.stack(frame[sampled]) if sampled in frame.columns else None,
                           frame[rank].to_numpy() if rank in frame.columns else None)  # fmt: skip


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow progress bar per downloaded file (restores the caller's setting)."""
    previous = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = previous


def load_member(run_id: str, checkpoint: str = "best") -> Member:
    """Read a run's tags and download its ``oof.parquet``, ``test_predictions.parquet`` and ``config.yaml``.

    ``checkpoint="final"`` reads the predictions of the fold models' last-epoch weights instead
    (``oof_final.parquet``, ``test_predictions_final.parquet``).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        run = _client().get_run(run_id)
    except MlflowException:
        raise HarnessError(f"Unknown run id {run_id!r} in the tracking store {uri}.") from None
    tags = dict(run.data.tags)
    missing = [t for t in ("dataset", "metric", "fold_file") if t not in tags]
    if missing:
        raise HarnessError(f"Run {run_id!r} has no {', '.join(missing)} tag: it is not a finished CV run.")
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        suffix = "" if checkpoint == "best" else "_final"
        remote = {"oof.parquet": f"oof{suffix}.parquet", "test_predictions.parquet": f"test_predictions{suffix}.parquet",
                  "config.yaml": "config.yaml"}  # fmt: skip
        files = {}
        for name, artifact in remote.items():
            try:
                files[name] = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp))
            except (MlflowException, OSError) as exc:
                reason = " ".join(str(exc).split())[:160]
                raise HarnessError(f"Run {run_id!r} has no artifact {artifact} ({reason}).") from None
        oof = pd.read_parquet(files["oof.parquet"])
        test = pd.read_parquet(files["test_predictions.parquet"])
        config = yaml.safe_load(files["config.yaml"].read_text()) or {}
    for frame, name, needed in ((oof, "oof.parquet", ("id", "fold")), (test, "test_predictions.parquet", ("id",))):
        absent = [c for c in needed if c not in frame.columns]
        if absent:
            raise HarnessError(f"Run {run_id!r}: {name} has no column {', '.join(absent)}.")
    return Member(
        run_id=run_id, run_name=run.info.run_name or run_id, model=tags.get("model", "?"),
        dataset=tags["dataset"], metric=tags["metric"], fold_file=tags["fold_file"], tags=tags,
        oof=oof, test=test, config=config,
    )  # fmt: skip


def top_runs(dataset: str, n: int, metric: str | None = None) -> list[str]:
    """Ids of the ``n`` best finished CV runs of ``dataset`` by OOF ``metric`` (default: the dataset's).

    Only runs on the best run's fold file are considered, since runs on other folds cannot be
    blended with it. Fewer than ``n`` ids come back when fewer runs qualify.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HarnessError(f"--top must be a positive integer, got {n!r}.")
    if metric is None:
        from harness.data import get_dataset_spec

        metric = get_dataset_spec(dataset).metric
    direction = get_metric(metric)
    client = _client()
    experiment = client.get_experiment_by_name(dataset)
    if experiment is None:
        raise HarnessError(f"No tracked runs of dataset {dataset!r} in {tracking_uri()}.")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.kind = 'cv' and tags.metric = '{metric}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    key = f"oof_{metric_key(metric)}"
    scored = [r for r in runs if key in r.data.metrics and np.isfinite(r.data.metrics[key])]
    if not scored:
        raise HarnessError(f"No finished CV runs of dataset {dataset!r} with metric {metric!r} in {tracking_uri()}.")
    scored.sort(key=lambda r: r.data.metrics[key], reverse=direction.greater_is_better)
    fold_file = scored[0].data.tags.get("fold_file")
    return [r.info.run_id for r in scored if r.data.tags.get("fold_file") == fold_file][:n]


def check_members(members: Sequence[Member]) -> None:
    """Refuse members that cannot be blended, with a one-line message naming the two runs."""
    if len(members) < 2:
        raise HarnessError(f"An ensemble needs at least 2 runs, got {len(members)}.")
    first = members[0]
    seen = {first.run_id}
    for other in members[1:]:
        if other.run_id in seen:
            raise HarnessError(f"Run {other.run_id} is listed twice.")
        seen.add(other.run_id)

        def refuse(what: str, a: Any, b: Any) -> None:
            raise HarnessError(f"Cannot blend runs {first.label} and {other.label}: {what} differs ({a} vs {b}).")

        for what in ("dataset", "fold_file", "metric"):
            if getattr(first, what) != getattr(other, what):
                refuse(what.replace("_", " "), repr(getattr(first, what)), repr(getattr(other, what)))
        for what, a, b in (("OOF ids", first.oof_ids, other.oof_ids), ("test ids", first.test_ids, other.test_ids)):
            if len(a) != len(b) or not np.array_equal(a, b):
                only = sorted(set(a) ^ set(b))
                detail = f"e.g. {only[0]!r} in one only" if only else "same ids in another order"
                refuse(what, f"{len(a)} rows", f"{len(b)} rows, {detail}")
        if not np.array_equal(first.folds, other.folds):
            refuse("fold column of oof.parquet", "fold file", "assignments")
        a, b = np.shape(first.oof_values())[1:], np.shape(other.oof_values())[1:]
        if a != b:
            refuse("prediction shape", a or "one value", b or "one value")


# ----------------------------------------------------------------------------------------------
# Blending methods: pure functions on P = [M, N] (regression) or [M, N, C] (probabilities)
# ----------------------------------------------------------------------------------------------


def mean(P: np.ndarray) -> np.ndarray:
    r"""Arithmetic mean of the members: :math:`\hat y_i = \frac{1}{M}\sum_m p_{mi}`."""
    return np.mean(np.asarray(P, dtype=float), axis=0)


def median(P: np.ndarray) -> np.ndarray:
    r"""Element-wise median of the members: :math:`\hat y_i = \operatorname{median}_m p_{mi}`.

    For class probabilities the per-class medians no longer sum to 1; :func:`blend` renormalises.
    """
    return np.median(np.asarray(P, dtype=float), axis=0)


def normalise_weights(weights: Sequence[float], n_members: int) -> np.ndarray:
    """Check user weights (finite, non-negative, one per member, positive sum) and scale them to sum 1."""
    try:
        w = np.asarray(weights, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise HarnessError(f"Weights must be numbers, got {weights!r}.") from None
    if len(w) != n_members:
        raise HarnessError(f"Got {len(w)} weights for {n_members} runs; give one weight per run.")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise HarnessError(f"Weights must be non-negative with a positive sum, got {list(map(float, w))}.")
    return w / w.sum()


def weighted_mean(P: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    r"""Weighted mean: :math:`\hat y_i = \sum_m w_m p_{mi}` with :math:`w_m \ge 0,\ \sum_m w_m = 1`.

    ``weights`` are checked and normalised by :func:`normalise_weights`.
    """
    P = np.asarray(P, dtype=float)
    return np.tensordot(normalise_weights(weights, P.shape[0]), P, axes=1)


def rank_mean(P: np.ndarray) -> np.ndarray:
    r"""Mean of the members' ranks, mapped back to the target scale.

    Each member's predictions become ranks scaled to [0, 1] (ties share their average rank):
    :math:`r_{mi} = (\operatorname{rank}(p_{m\cdot})_i - 1) / (N - 1)`, averaged over members:
    :math:`\bar r_i = \frac1M \sum_m r_{mi}`. To keep outputs in target units, :math:`\bar r` is
    mapped through the quantile function of the mean prediction: with :math:`q` the sorted values
    of :math:`\bar p_i = \frac1M\sum_m p_{mi}` placed at :math:`0, \frac1{N-1}, \dots, 1`,
    :math:`\hat y_i = \operatorname{interp}(\bar r_i;\ q)` (linear interpolation). The blend thus
    has the mean's distribution and the average order of the members. With ``[M, N, C]``
    probabilities each class column is handled alone (:func:`blend` renormalises rows).
    """
    P = np.asarray(P, dtype=float)
    if P.ndim == 3:
        return np.stack([rank_mean(P[:, :, c]) for c in range(P.shape[2])], axis=1)
    n = P.shape[1]
    if n == 1:
        return P.mean(axis=0)
    ranks = np.stack([(rankdata(p, method="average") - 1) / (n - 1) for p in P])
    quantiles = np.sort(P.mean(axis=0))
    return np.interp(ranks.mean(axis=0), np.linspace(0.0, 1.0, n), quantiles)


def optimize_weights(
    P: np.ndarray, score: Callable[[np.ndarray], float], greater_is_better: bool = False
) -> np.ndarray:
    r"""Simplex weights that optimise ``score(weighted_mean(P, w))`` on the OOF rows.

    Solves :math:`\min_w \pm\,\mathrm{score}(\sum_m w_m p_m)` s.t. :math:`0 \le w_m \le 1,\
    \sum_m w_m = 1` with SLSQP from the equal weights and from each one-hot vector (each
    member alone), and keeps the best result *including the starting points*, so the blend never
    scores worse on the OOF rows than the best single member.
    """
    P = np.asarray(P, dtype=float)
    m = P.shape[0]
    sign = -1.0 if greater_is_better else 1.0

    def project(w: np.ndarray) -> np.ndarray:
        w = np.clip(np.nan_to_num(np.asarray(w, dtype=float)), 0.0, 1.0)
        return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)

    def objective(w: np.ndarray) -> float:
        value = sign * float(score(np.tensordot(project(w), P, axes=1)))
        return value if np.isfinite(value) else 1e300

    starts = [np.full(m, 1.0 / m), *np.eye(m)]
    candidates = list(starts)
    for start in starts:
        result = minimize(
            objective, start, method="SLSQP", bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
            options={"maxiter": 200, "ftol": 1e-10},
        )  # fmt: skip
        candidates.append(project(result.x))
    values = [objective(w) for w in candidates]
    return candidates[int(np.argmin(values))]


def _stacker(name: str, seed: int):
    if name == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0)
    if name == "lightgbm":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(
            n_estimators=100, learning_rate=0.05, num_leaves=7, min_child_samples=5,
            subsample=1.0, colsample_bytree=1.0, deterministic=True, force_row_wise=True,
            n_jobs=1, random_state=seed, verbose=-1,
        )  # fmt: skip
    raise HarnessError(f"Unknown stacker {name!r}, valid stackers: {', '.join(STACKERS)}.")


def stack(
    P_oof: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    P_test: np.ndarray,
    stacker: str = "ridge",
    *,
    log_space: bool = False,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, Any]:
    r"""Level-2 regression on the members' predictions, under the members' own folds.

    Features :math:`x_i = (p_{1i}, \dots, p_{Mi})` (:math:`\log(1 + p_{mi})` with ``log_space``,
    for MSLE-type metrics, the target then :math:`\log(1 + y_i)`). For each fold :math:`k` the
    stacker is fitted on the rows of the other folds and predicts fold :math:`k`: the stacked OOF
    prediction of a row never depends on that row's fold's targets. Test predictions come from a
    stacker fitted on all OOF rows, applied to the members' fold-averaged test predictions.
    With ``log_space`` predictions are mapped back by :math:`\exp(\cdot) - 1` and clipped at 0.

    Returns ``(oof, test, final_model)``.
    """
    P_oof, P_test = np.asarray(P_oof, dtype=float), np.asarray(P_test, dtype=float)
    if P_oof.ndim != 2:
        raise HarnessError("Stacking supports regression members (one prediction per row) only.")
    X, X_test, target = P_oof.T, P_test.T, np.asarray(y, dtype=float)
    if log_space:
        X, X_test, target = np.log1p(np.clip(X, 0, None)), np.log1p(np.clip(X_test, 0, None)), np.log1p(target)
    folds = np.asarray(folds)
    oof = np.empty(len(target))
    for k in np.unique(folds):
        inside = folds == k
        model = _stacker(stacker, seed).fit(X[~inside], target[~inside])
        oof[inside] = model.predict(X[inside])
    final = _stacker(stacker, seed).fit(X, target)
    test = final.predict(X_test)
    if log_space:
        oof, test = np.clip(np.expm1(oof), 0, None), np.clip(np.expm1(test), 0, None)
    return oof, test, final


def blend(
    method: str,
    P_oof: np.ndarray,
    P_test: np.ndarray,
    *,
    y: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    score: Callable[[np.ndarray], float] | None = None,
    greater_is_better: bool = False,
    weights: Sequence[float] | str | None = None,
    stacker: str = "ridge",
    log_space: bool = False,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, list[float] | None]:
    """Apply ``method`` to OOF and test stacks; returns ``(oof, test, weights or None)``.

    ``score(pred) -> float`` scores OOF predictions (needed for ``weights="optimize"``); ``y``
    and ``folds`` are needed for stacking. Class probabilities from ``median`` and
    ``rank_mean`` are renormalised to sum 1 per row.
    """
    P_oof, P_test = np.asarray(P_oof, dtype=float), np.asarray(P_test, dtype=float)
    used: list[float] | None = None
    if method == "mean":
        oof, test = mean(P_oof), mean(P_test)
    elif method == "median":
        oof, test = median(P_oof), median(P_test)
    elif method == "rank_mean":
        oof, test = rank_mean(P_oof), rank_mean(P_test)
    elif method == "weighted_mean":
        if weights is None:
            raise HarnessError("Method weighted_mean needs --weights (one per run, or 'optimize').")
        if isinstance(weights, str) and weights == "optimize":
            if score is None:
                raise HarnessError("weights='optimize' needs a score function.")
            w = optimize_weights(P_oof, score, greater_is_better)
        elif isinstance(weights, str):
            raise HarnessError(f"Weights must be numbers or 'optimize', got {weights!r}.")
        else:
            w = normalise_weights(weights, P_oof.shape[0])
        oof, test, used = weighted_mean(P_oof, w), weighted_mean(P_test, w), [float(v) for v in w]
    elif method == "stacking":
        if y is None or folds is None:
            raise HarnessError("Stacking needs the OOF targets and folds.")
        oof, test, model = stack(P_oof, y, folds, P_test, stacker, log_space=log_space, seed=seed)
        if hasattr(model, "coef_"):
            used = [float(v) for v in np.ravel(model.coef_)]
    else:
        raise HarnessError(f"Unknown ensemble method {method!r}, valid methods: {', '.join(METHODS)}.")
    if P_oof.ndim == 3 and method in ("median", "rank_mean"):
        oof, test = (a / np.clip(a.sum(axis=1, keepdims=True), 1e-12, None) for a in (oof, test))
    return oof, test, used


# ----------------------------------------------------------------------------------------------
# The ensemble run
# ----------------------------------------------------------------------------------------------


def _load_targets(member: Member, log: Callable[[str], Any]):
    """The dataset of the members' config, with train rows in the OOF id order."""
    from harness.data import load_dataset

    data = member.config.get("data") or {}
    dataset = load_dataset(
        data.get("name") or member.dataset, data.get("dir"), data_root=data.get("root", "data"),
        reader_options=data.get("options") or {}, log=log,
    )  # fmt: skip
    train = dataset.train.assign(**{dataset.id_col: dataset.train[dataset.id_col].astype(str)})
    train = train.set_index(dataset.id_col, drop=False)
    ids = member.oof_ids
    missing = [i for i in ids if i not in train.index]
    if missing or len(train) != len(ids):
        raise HarnessError(
            f"Run {member.label}: its OOF ids do not match the train rows of the data it names "
            f"({len(ids)} OOF rows vs {len(train)} train rows{', e.g. ' + repr(missing[0]) if missing else ''})."
        )
    test_ids = set(dataset.test[dataset.id_col].astype(str))
    if test_ids != set(member.test_ids):
        raise HarnessError(f"Run {member.label}: its test ids do not match the test rows of the data it names.")
    return dataset, train.loc[ids].reset_index(drop=True)


def _refuse_ranking(dataset: str) -> None:
    from harness.data import get_dataset_spec

    if get_dataset_spec(dataset).task.value == "sequential_recommendation":
        raise HarnessError(
            f"Dataset {dataset!r} is a sequential-recommendation task: --fold-models blends row-wise "
            "predictions only (each run's test lists are already its fold models' fusion)."
        )


def fuse_recommendations(
    method: str, oofs: list[Recommendations], tests: list[Recommendations], weights: Sequence[float] | str | None
) -> tuple[Recommendations, Recommendations, list[float] | None]:
    """Recommendation members: ``mean`` / ``weighted_mean`` fuse min-max-scaled scores over the union
    of candidates, ``rank_mean`` is reciprocal-rank fusion (see :func:`harness.ranking.fuse`)."""
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


def _rows(predictions: np.ndarray | Recommendations, mask: np.ndarray) -> np.ndarray | Recommendations:
    return predictions.take(mask) if isinstance(predictions, Recommendations) else predictions[mask]


def run_ensemble(
    run_ids: Sequence[str],
    method: str,
    weights: Sequence[float] | str | None = None,
    stacker: str = "ridge",
    name: str | None = None,
    submissions_dir: str | Path = "submissions",
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Blend finished CV runs, score the blend on the OOF rows, write a submission and log a run."""
    from harness.tasks import get_task_adapter

    if method not in METHODS:
        raise HarnessError(f"Unknown ensemble method {method!r}, valid methods: {', '.join(METHODS)}.")
    if method == "stacking" and stacker not in STACKERS:
        raise HarnessError(f"Unknown stacker {stacker!r}, valid stackers: {', '.join(STACKERS)}.")
    if method != "weighted_mean" and weights is not None:
        raise HarnessError(f"--weights applies to method weighted_mean only, not {method!r}.")
    run_ids = list(run_ids)
    if len(run_ids) < 2:
        raise HarnessError(f"An ensemble needs at least 2 runs, got {len(run_ids)}.")
    if weights is not None and not isinstance(weights, str):
        normalise_weights(weights, len(run_ids))  # fail before downloading anything
    members = [load_member(run_id) for run_id in run_ids]
    check_members(members)
    first = members[0]
    metric = get_metric(first.metric)
    dataset, rows = _load_targets(first, log)
    adapter = get_task_adapter(dataset.task)
    seed = int(first.config.get("seed", 42))
    folds = first.folds
    fold_ids = sorted(np.unique(folds).tolist())

    def score(predictions: np.ndarray) -> float:
        return adapter.score(metric, dataset, rows, predictions)

    P_oof = [m.oof_values() for m in members]
    P_test = [m.test_values() for m in members]
    if isinstance(P_oof[0], Recommendations):
        oof, test, used_weights = fuse_recommendations(method, P_oof, P_test, weights)
    else:
        P_oof, P_test = np.stack(P_oof), np.stack(P_test)
        oof, test, used_weights = blend(
            method, P_oof, P_test, y=rows[dataset.target_col].to_numpy(), folds=folds, score=score,
            greater_is_better=metric.greater_is_better, weights=weights, stacker=stacker,
            log_space=metric.name in LOG_SPACE_METRICS, seed=seed,
        )  # fmt: skip

    # scores: the blend overall and per fold, each member on the same rows
    fold_scores = {k: adapter.score(metric, dataset, rows[folds == k], _rows(oof, folds == k)) for k in fold_ids}
    values = np.array(list(fold_scores.values()))
    summary = {
        f"cv_{metric.name}_mean": float(values.mean()),
        f"cv_{metric.name}_std": float(values.std(ddof=0)),
        f"oof_{metric.name}": score(oof),
    }
    if dataset.target_col in dataset.test.columns:  # test targets known (leave-one-out): score the blend there too
        test_rows = dataset.test.set_index(dataset.test[dataset.id_col].astype(str)).loc[first.test_ids]
        summary[f"test_{metric.name}"] = adapter.score(metric, dataset, test_rows.reset_index(drop=True), test)
    member_scores = [
        {"run_id": m.run_id, "run_name": m.run_name, "model": m.model, f"oof_{metric.name}": score(P_oof[i])}
        for i, m in enumerate(members)
    ]  # fmt: skip

    short = uuid.uuid4().hex[:8]
    run_name = name or f"ensemble-{method}-{short}"
    run_dir = DEFAULT_DIR / "runs" / run_name
    test_ids = pd.Series(first.test_ids)
    submission = adapter.submission(dataset, test_ids, test)
    submission_path = Path(submissions_dir) / f"ensemble-{method}-{short}.csv"
    params = {
        "method": method, "members": [m.run_id for m in members],
        "weights": used_weights,  # the weights applied (stacking with ridge: its coefficients)
        "weights_requested": weights if isinstance(weights, str) or weights is None else [float(w) for w in weights],
        "stacker": stacker if method == "stacking" else None,
    }  # fmt: skip
    scores = {
        **params, "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "folds": [{"fold": k, metric.name: v} for k, v in fold_scores.items()], **summary, "member_scores": member_scores,
    }  # fmt: skip

    tracker = Tracker(dataset.name)
    tags = {
        "kind": "ensemble", "model": f"ensemble:{method}", "dataset": dataset.name, "metric": metric.name,
        "greater_is_better": str(metric.greater_is_better), "fold_file": first.fold_file,
        "data_fingerprint": first.tags.get("data_fingerprint", ""), "seed": str(seed),
        "members": ",".join(m.run_id for m in members),
    }  # fmt: skip
    with tracker.run(run_name, tags=tags) as run_id:
        tracker.log_params({"method": method, "weights": params["weights"], "stacker": params["stacker"],
                            "weights_requested": params["weights_requested"], "n_members": len(members)})  # fmt: skip
        tracker.log_metrics({**summary, **{f"fold_{k}/{metric.name}": v for k, v in fold_scores.items()}})
        tracker.log_metrics({f"member_{i}/oof_{metric.name}": s[f"oof_{metric.name}"] for i, s in enumerate(member_scores)})
        oof_frame = adapter.to_frame(pd.Series(first.oof_ids), oof).assign(fold=folds)
        test_frame = adapter.to_frame(test_ids, test)
        artifacts = {
            "oof.parquet": lambda p: oof_frame.to_parquet(p, index=False),
            "test_predictions.parquet": lambda p: test_frame.to_parquet(p, index=False),
            "scores.json": lambda p: p.write_text(json.dumps(scores, indent=2)),
            "config.yaml": lambda p: p.write_text(yaml.safe_dump({**params, "data": first.config.get("data"),
                                                                  "metric": metric.name, "seed": seed}, sort_keys=False)),
        }  # fmt: skip
        for file_name, write in artifacts.items():
            atomic_write(run_dir / file_name, write)
        atomic_write(submission_path, lambda p: submission.to_csv(p, index=False))
        for file_name in artifacts:
            tracker.log_artifact(run_dir / file_name)
        tracker.log_artifact(submission_path, "submission")

    key = f"oof_{metric.name}"
    width = max(len(s["run_name"]) for s in member_scores + [{"run_name": run_name}])
    for s in member_scores:
        log(f"  {s['run_name']:<{width}}  OOF {metric.name} {s[key]:.4f}")
    weights_text = f", weights {', '.join(f'{w:.3f}' for w in used_weights)}" if used_weights else ""
    log(f"  {run_name:<{width}}  OOF {metric.name} {summary[key]:.4f}  (CV {summary[f'cv_{metric.name}_mean']:.4f} "
        f"± {summary[f'cv_{metric.name}_std']:.4f}{weights_text})")  # fmt: skip
    log(f"Submission: {submission_path}")
    best = (max if metric.greater_is_better else min)(s[key] for s in member_scores)
    return {
        "run_id": run_id, "run_name": run_name, "run_dir": str(run_dir), "method": method,
        "stacker": params["stacker"], "dataset": dataset.name, "metric": metric.name,
        "greater_is_better": metric.greater_is_better, "members": [m.run_id for m in members],
        "weights": used_weights, "member_scores": member_scores, f"best_member_{key}": best, **summary,
        "folds": scores["folds"], "submission": str(submission_path), "tracking_uri": tracker.uri,
    }  # fmt: skip


def fold_ensemble(
    run_id: str,
    method: str,
    *,
    use_best_checkpoint: bool = True,
    weights: Sequence[float] | None = None,
    submissions_dir: str | Path = "submissions",
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Blend one CV run's fold models on the test set, with their best or last-epoch weights.

    The seed's ``use_best_checkpoint`` / ``ensemble_method`` options: ``method`` is ``mean``,
    ``median`` or ``weighted_mean`` (``weights`` one per fold). The OOF score reported is that of
    the chosen checkpoint (each row predicted by the fold model that did not train on it).
    """
    from harness.tasks import get_task_adapter

    blenders = {"mean": mean, "median": median, "weighted_mean": lambda P: weighted_mean(P, weights)}
    if method not in blenders:
        raise HarnessError(f"Fold-model ensembles take mean, median or weighted_mean, got {method!r}.")
    if (weights is not None) != (method == "weighted_mean"):
        raise HarnessError("--weights (one per fold) goes with --method weighted_mean, and only with it.")
    checkpoint = "best" if use_best_checkpoint else "final"
    member = load_member(run_id, checkpoint)
    _refuse_ranking(member.dataset)
    folds = member.fold_test_values()
    if weights is not None:
        normalise_weights(weights, len(folds))
    blended = blenders[method](folds)
    dataset, rows = _load_targets(member, log)
    adapter = get_task_adapter(dataset.task)
    metric = get_metric(member.metric)
    oof_score = adapter.score(metric, dataset, rows, member.oof_values())
    submission = adapter.submission(dataset, pd.Series(member.test_ids), blended)
    path = Path(submissions_dir) / f"{member.run_name}-folds-{method}-{checkpoint}.csv"
    atomic_write(path, lambda p: submission.to_csv(p, index=False))
    log(f"{member.run_name}: {len(folds)} fold models, {checkpoint} checkpoints, {method}; "
        f"OOF {metric.name} {oof_score:.4f}")  # fmt: skip
    log(f"Submission: {path}")
    return {"run_id": run_id, "checkpoint": checkpoint, "method": method, f"oof_{metric.name}": oof_score,
            "submission": str(path)}  # fmt: skip

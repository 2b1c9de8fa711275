"""Ensembling finished CV runs: blend their out-of-fold and test predictions.

A *member* is a finished CV run in the MLflow store: its ``oof.parquet`` (``id``, the
predictions under ``prediction`` as the task adapter writes them, ``fold``),
``test_predictions.parquet`` (``id``, each fold model's under ``fold_<k>``) and ``config.yaml``. Members can be blended only if they share the dataset, the
fold file and the metric and predict the same OOF and test ids; because they share the fold file,
every member's OOF prediction of a row comes from a model that never saw that row, so the blend's
OOF score is an honest CV estimate (up to the optimism of choosing weights or a stacker on the
same OOF rows; stacking refits fold by fold to avoid it).

How predictions are read and blended is the task's (:mod:`harness.tasks`): row-wise tasks blend
through :mod:`harness.blending`, recommendation runs fuse their lists.

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

from harness.blending import METHODS, STACKERS, mean, median, normalise_weights, weighted_mean
from harness.errors import HarnessError
from harness.io import atomic_write
from harness.metrics import get_metric
from harness.submissions import file_digest
from harness.tasks import get_task_adapter
from harness.tracking import DEFAULT_DIR, Tracker, metric_key, tracking_uri

__all__ = ["Member", "load_member", "top_runs", "check_members", "run_ensemble", "fold_ensemble"]

_TEST_COLUMN = re.compile(r"fold_(\d+)(?:_|$)")
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
    oof: pd.DataFrame  # id, the predictions under "prediction", fold
    test: pd.DataFrame  # id, each fold model's predictions under "fold_<k>", or the blend's under "prediction"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self):
        """The adapter of the member's task type (how its predictions are stored and blended)."""
        from harness.data import get_dataset_spec

        return get_task_adapter(get_dataset_spec(self.dataset).task)

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

    def oof_values(self):
        """The out-of-fold predictions, in the task's prediction type."""
        values = self.task.from_frame(self.oof, "prediction")
        if values is None:
            raise HarnessError(f"Run {self.label}: oof.parquet has no prediction column.")
        return values

    def test_values(self):
        """The test predictions: the fold models' averaged, as the CV run averaged them."""
        blended = self.task.from_frame(self.test, "prediction")
        return blended if blended is not None else self.task.average(self.fold_test_values())

    def fold_test_values(self) -> list:
        """Each fold model's test predictions, in fold order."""
        folds = sorted({int(m[1]) for c in self.test.columns if (m := _TEST_COLUMN.match(str(c)))})
        values = [self.task.from_frame(self.test, f"fold_{k}") for k in folds]
        if not values or any(v is None for v in values):
            raise HarnessError(f"Run {self.label}: test_predictions.parquet has no fold_<k> columns.")
        return values


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


def top_runs(dataset: str, n: int, metric: str | None = None, log: Callable[[str], Any] = print) -> list[str]:
    """Ids of the ``n`` best finished CV runs of ``dataset`` by OOF ``metric`` (default: the dataset's), to blend.

    Only runs on the best run's fold file can be blended with it. The runs passed over for that
    (those ranked above the last one chosen) are named with the reason (another fold file, other
    data): in a note through ``log`` when at least two runs qualify, in the error when fewer do.
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
    chosen, skipped = _on_one_fold_file(scored, n)
    named = "; ".join(f"{run.info.run_name} ({run.info.run_id}): {reason}" for run, reason in skipped)
    hint = " (runs that differ only in seed share a fold file when they share --fold-seed)" if skipped else ""
    if len(chosen) < 2:
        detail = f"; skipped {len(skipped)} run(s) that cannot be blended with it: {named}{hint}"
        raise HarnessError(f"An ensemble needs at least 2 runs, got {len(chosen)} on the fold file of the best run "
                           f"{chosen[0].info.run_name} ({chosen[0].data.tags.get('fold_file')})"
                           f"{detail if skipped else ''}.")  # fmt: skip
    if skipped:
        log(f"skipped {len(skipped)} run(s) that cannot be blended with the best run {chosen[0].info.run_name}: "
            f"{named}{hint}")  # fmt: skip
    return [run.info.run_id for run in chosen]


def _on_one_fold_file(runs: list, n: int) -> tuple[list, list]:
    """The first ``n`` of ``runs`` (best first) on the first one's fold file, and the runs passed over
    before the last of them, each with the reason."""
    best = runs[0].data.tags
    chosen, skipped = [], []
    for run in runs:
        if len(chosen) == n:
            break
        tags = run.data.tags
        if tags.get("fold_file") == best.get("fold_file"):
            chosen.append(run)
        elif tags.get("data_fingerprint") != best.get("data_fingerprint"):
            theirs, ours = (str(t.get("data_fingerprint"))[:8] for t in (tags, best))
            skipped.append((run, f"other data (fingerprint {theirs}, not {ours})"))
        else:
            skipped.append((run, f"other fold file ({tags.get('fold_file')}, not {best.get('fold_file')})"))
    return chosen, skipped


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
    oof, test, used_weights = adapter.blend(method, P_oof, P_test, dataset=dataset, rows=rows, metric=metric,
                                            folds=folds, weights=weights, stacker=stacker, seed=seed)  # fmt: skip

    # scores: the blend overall and per fold, each member on the same rows
    fold_scores = {k: adapter.score(metric, dataset, rows[folds == k], adapter.take(oof, folds == k)) for k in fold_ids}
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
        tracker.set_tags({"submission_sha256": file_digest(submission_path)})  # ties the file to this run when scored
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
    blenders = {"mean": mean, "median": median, "weighted_mean": lambda P: weighted_mean(P, weights)}
    if method not in blenders:
        raise HarnessError(f"Fold-model ensembles take mean, median or weighted_mean, got {method!r}.")
    if (weights is not None) != (method == "weighted_mean"):
        raise HarnessError("--weights (one per fold) goes with --method weighted_mean, and only with it.")
    checkpoint = "best" if use_best_checkpoint else "final"
    member = load_member(run_id, checkpoint)
    if not member.task.fold_blendable:
        raise HarnessError(
            f"Run {member.label} is on dataset {member.dataset!r}, whose predictions do not blend row by row: "
            "--fold-models blends row-wise predictions only (its test predictions are already its fold models' fusion)."
        )
    folds = np.stack(member.fold_test_values())
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

"""The cross-validation runner: one command's flow, from config to submission.

For each fold the family is trained on the other folds, predicts its validation fold (out-of-fold,
OOF) and the test set. The OOF predictions give the CV score; the fold models' test predictions,
averaged, give the submission. Everything is logged to one MLflow parent run with a nested run
per fold, each fold's as soon as it finishes.

A run survives interruption at fold granularity: its folder holds ``run.json`` (what must match
to continue it) and ``config.yaml`` from the start, and each finished fold's outcome
(``fold_<k>/outcome.pkl``) as it completes, written atomically. ``run_cv(config, resume=...)``
loads the finished folds, trains the others and continues the same MLflow run, so the result is
the one an uninterrupted run with the same seed gives.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import socket
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import yaml

from harness import plots
from harness.config import RunConfig, build, check_train_config, flatten, merge
from harness.data import Dataset, get_dataset_spec, load_dataset
from harness.errors import HarnessError
from harness.folds import get_folds
from harness.io import atomic_write, load_checkpoint
from harness.metrics import get_metric
from harness.registry import Family, FitContext, create_model, get_model_entry, list_models
from harness.runtime import git_commit, package_versions, resolve_device, seed_everything
from harness.submissions import file_digest
from harness.tasks import get_task_adapter
from harness.tracking import DEFAULT_DIR, NullTracker, Tracker

__all__ = ["run_cv", "make_run_config", "resolve_run_config", "find_run", "new_run_name", "is_resumable"]

RUNS_DIR = DEFAULT_DIR / "runs"
# Settings that may change when a run is resumed: they do not touch the numbers.
_RESUMABLE_CHANGES = ("workers", "devices", "train.progress")


def make_run_config(model: str, *layers: dict[str, Any] | None) -> RunConfig:
    """Defaults ⊕ the family's training defaults ⊕ ``layers`` (YAML, ``key=value``, CLI flags).

    ``model.*`` keys in a layer are the family's own config (stored as ``model_params``).
    """
    entry = get_model_entry(model)
    merged = merge({"train": dict(entry.train_defaults)}, *[_rename_model_key(layer, model) for layer in layers])
    merged["model"] = model
    return build(RunConfig, merged)


def _rename_model_key(layer: dict[str, Any] | None, model: str) -> dict[str, Any]:
    layer = dict(layer or {})
    value = layer.pop("model", None)
    if isinstance(value, dict):
        layer["model_params"] = merge(layer.get("model_params"), value)
    elif value is not None and value != model:
        raise HarnessError(f"The config names model {value!r} but --model is {model!r}.")
    return layer


def resolve_run_config(config: RunConfig) -> RunConfig:
    """Fill what ``None`` leaves to the model and dataset, and check they fit together."""
    entry = get_model_entry(config.model)
    dataset_name = config.data.name or entry.dataset
    spec = get_dataset_spec(dataset_name)
    if spec.task != entry.task:
        fitting = [name for name in list_models() if get_model_entry(name).task == spec.task]
        raise HarnessError(
            f"Model {entry.name!r} solves {entry.task.value!r} but dataset {dataset_name!r} is {spec.task.value!r}; "
            f"models for {spec.task.value!r}: {', '.join(fitting) or 'none registered'}."
        )
    metric = get_metric(config.metric or spec.metric)
    if metric.task != entry.task.metric_task:
        raise HarnessError(f"Metric {metric.name!r} is for {metric.task!r}, not for {entry.task.value!r}.")
    # Validate the training settings and the family's config now, before anything is generated or written.
    check_train_config(config.train)
    model_params = dataclasses.asdict(build(entry.config_cls, config.model_params, "model"))
    return dataclasses.replace(
        config,
        fold_scheme=config.fold_scheme or spec.fold_scheme,
        fold_seed=config.seed if config.fold_seed is None else config.fold_seed,
        metric=metric.name,
        data=dataclasses.replace(config.data, name=dataset_name),
        model_params=model_params,
    )


def run_cv(
    config: RunConfig,
    *,
    log: Callable[[str], Any] = print,
    on_fold: Callable[[int, float], None] | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    resume: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Cross-validate ``config.model``; returns scores, paths and ids as a plain dict.

    Args:
        on_fold: called with ``(fold, score)`` as each fold finishes (in fold order when folds run
            sequentially, in completion order otherwise; a resumed run's finished folds first);
            an exception it raises (e.g. Optuna's ``TrialPruned``) stops the run. Used by tuning
            to prune on fold scores.
        nested: log the MLflow run under the active one (a study's parent run).
        tags: extra MLflow tags of the run.
        resume: continue an interrupted run, by run name or ``"last"`` (see :func:`find_run`); its
            recorded config, seed, fold file, data fingerprint and threads must match this one's.
        name: a new run's name (default ``<model>-<8 hex digits>``), e.g. chosen by a tuning trial
            beforehand so that a retry of the trial can resume the run.
    """
    # configuration
    config = resolve_run_config(config)
    entry = get_model_entry(config.model)
    metric = get_metric(config.metric)
    adapter = get_task_adapter(entry.task)
    devices = resolve_devices(config)
    threads = _threads(config, devices)
    _warn_if_busy(config, threads, log)
    seed_everything(config.seed)

    # data and folds
    dataset = load_dataset(
        config.data.name, config.data.dir, data_root=config.data.root,
        reader_options=config.data.options, log=log,
    )  # fmt: skip
    fold_path, folds = get_folds(dataset, config.fold_scheme, config.folds, config.fold_seed, config.folds_dir)
    adapter.check_folds(dataset, folds)
    fold_of = dict(zip(folds["id"], folds["fold"]))
    train_fold = dataset.train[dataset.id_col].astype(str).map(fold_of).to_numpy()

    resolved = dataclasses.asdict(config)
    record = {"seed": config.seed, "fold_file": fold_path.name, "data_fingerprint": dataset.fingerprint,
              "threads_per_fold": threads}  # fmt: skip
    if resume is None:
        if name is not None and (RUNS_DIR / name).exists():
            raise HarnessError(f"Run {name!r} already exists in {str(RUNS_DIR)!r}; a new run needs a new name.")
        run_name = name or new_run_name(config.model)
        run_dir, parent_id, finished = RUNS_DIR / run_name, None, {}
    else:
        run_dir = find_run(resume, config.model)
        recorded = _check_resumable(run_dir, resolved, record)
        run_name, parent_id = run_dir.name, recorded.get("run_id")
        finished = _finished_folds(run_dir, config.folds)
    tracker = Tracker(dataset.name) if config.tracking else NullTracker()
    closed = tracker.close_dead_runs()
    if closed:
        log(f"marked {len(closed)} run(s) whose process is gone as KILLED: {', '.join(closed)}")
    log(f"{run_name}: {config.model} on {dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test rows), "
        f"{config.folds} {config.fold_scheme} folds (fold seed {config.fold_seed}), metric {metric.name}, "
        f"devices {','.join(devices)}, {threads} threads per fold, seed {config.seed}")  # fmt: skip
    if resume is not None:
        log(f"{run_name}: resuming with folds {', '.join(map(str, sorted(finished))) or 'none'} already finished")

    fold_rows, histories = [], {}
    started = time.perf_counter()
    run_tags = {"model": config.model, "dataset": dataset.name, "kind": "cv", **(tags or {})}
    with tracker.run(run_name, nested=nested, tags=run_tags, run_id=parent_id) as run_id:
        if parent_id is None:
            tracker.log_params(flatten(resolved))
            tracker.set_tags({
                "seed": config.seed, "fold_seed": config.fold_seed, "metric": metric.name,
                "greater_is_better": metric.greater_is_better,
                "fold_file": fold_path.name, "data_fingerprint": dataset.fingerprint, "git_commit": git_commit(),
                "devices": ",".join(devices), "threads_per_fold": threads,
                **{f"version.{k}": v for k, v in package_versions().items()},
            })  # fmt: skip
        tracker.set_tags({"pid": os.getpid(), "host": socket.gethostname()})
        atomic_write(run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))
        atomic_write(run_dir / "run.json", lambda p: p.write_text(json.dumps({"run_id": run_id, **record}, indent=2)))

        def fold_done(outcome: FoldOutcome) -> None:
            """Persist the fold, then log it, as soon as it finishes."""
            atomic_write(run_dir / f"fold_{outcome.fold}" / "outcome.pkl", lambda p: p.write_bytes(pickle.dumps(outcome)))
            log_fold(outcome)

        def log_fold(outcome: FoldOutcome) -> None:
            k = outcome.fold
            fold_tags = {"fold": str(k), "device": outcome.device, "pid": str(os.getpid()), "host": socket.gethostname()}
            with tracker.run(f"{run_name}-fold_{k}", nested=True, tags=fold_tags):
                for step, logs in enumerate(outcome.history, start=1):
                    tracker.log_metrics(logs, step=step)
                    tracker.log_metrics({f"fold_{k}/{name}": v for name, v in logs.items()}, step=step, run_id=run_id)
                tracker.log_metrics({metric.name: outcome.score, f"baseline_{metric.name}": outcome.baseline,
                                     "seconds": outcome.seconds, **outcome.explained})  # fmt: skip
            tracker.log_metrics({f"fold_{k}/{metric.name}": outcome.score,
                                 **{f"fold_{k}/{n}": v for n, v in outcome.explained.items()}})  # fmt: skip

        for outcome in finished.values():  # a fold persisted just before the kill may be logged in part or not at all
            if not tracker.has_finished_child_run(run_id, "fold", str(outcome.fold)):
                log_fold(outcome)

        # model training: folds in this process, or one worker process per device
        outcomes = run_folds(config, dataset, train_fold, run_dir, devices, log, on_fold, finished, fold_done)
        for outcome in outcomes:
            histories[outcome.fold] = outcome.history
            fold_rows.append({"fold": outcome.fold, "n_valid": int((train_fold == outcome.fold).sum()),
                              metric.name: outcome.score, f"baseline_{metric.name}": outcome.baseline,
                              "best_epoch": _best_epoch(outcome.history, metric), "seconds": outcome.seconds,
                              **outcome.explained})  # fmt: skip
        test_predictions = [outcome.test_pred for outcome in outcomes]

        # model evaluation: out-of-fold, and the test rows when their targets are known
        oof = adapter.assemble(len(dataset.train), [(np.flatnonzero(train_fold == o.fold), o.valid_pred) for o in outcomes])
        test_average = adapter.average(test_predictions)
        fold_scores = np.array([row[metric.name] for row in fold_rows])
        summary = {
            f"cv_{metric.name}_mean": float(fold_scores.mean()),
            f"cv_{metric.name}_std": float(fold_scores.std(ddof=0)),
            f"oof_{metric.name}": adapter.score(metric, dataset, dataset.train, oof),
            f"baseline_{metric.name}_mean": float(np.mean([row[f"baseline_{metric.name}"] for row in fold_rows])),
            **{f"oof_{name}": value for name, value in adapter.report(dataset, dataset.train, oof).items()},
        }
        if dataset.target_col in dataset.test.columns:
            summary[f"test_{metric.name}"] = adapter.score(metric, dataset, dataset.test, test_average)
            summary.update({f"test_{name}": v for name, v in adapter.report(dataset, dataset.test, test_average).items()})
        summary["seconds"] = time.perf_counter() - started
        tracker.log_metrics(summary)

        # artifacts: predictions with ids, fold file, plots, submission
        ids = dataset.train[dataset.id_col].astype(str)
        test_ids = dataset.test[dataset.id_col].astype(str)
        oof_frame = adapter.to_frame(ids, oof).assign(fold=train_fold)
        test_frame = _per_fold_frame(adapter, test_ids, test_predictions)
        submission = adapter.submission(dataset, test_ids, test_average)
        submission_path = Path(config.submissions_dir) / f"{run_name}.csv"

        artifacts = {
            "oof.parquet": lambda p: oof_frame.to_parquet(p, index=False),
            "test_predictions.parquet": lambda p: test_frame.to_parquet(p, index=False),
            "folds.csv": lambda p: folds.to_csv(p, index=False),
            "config.yaml": lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)),
        }
        if all(outcome.test_pred_final is not None for outcome in outcomes):
            # The last epoch's weights too: ensembles may use them instead of the best epoch's.
            oof_final = adapter.assemble(
                len(dataset.train), [(np.flatnonzero(train_fold == o.fold), o.valid_pred_final) for o in outcomes]
            )
            final_oof_frame = adapter.to_frame(ids, oof_final).assign(fold=train_fold)
            final_test_frame = _per_fold_frame(adapter, test_ids, [outcome.test_pred_final for outcome in outcomes])
            artifacts["oof_final.parquet"] = lambda p: final_oof_frame.to_parquet(p, index=False)
            artifacts["test_predictions_final.parquet"] = lambda p: final_test_frame.to_parquet(p, index=False)
        artifacts["scores.json"] = lambda p: p.write_text(json.dumps({"folds": fold_rows, **summary}, indent=2))
        for name, write in artifacts.items():  # scores.json last: its presence marks a finished run
            atomic_write(run_dir / name, write)
        figures = plots.cv_plots(run_dir, dataset, oof, histories, metric, [o.explained for o in outcomes])
        atomic_write(submission_path, lambda p: submission.to_csv(p, index=False))
        tracker.set_tags({"submission_sha256": file_digest(submission_path)})  # ties the file to this run when scored
        for path in [run_dir / name for name in artifacts] + figures:
            tracker.log_artifact(path)
        for k in sorted(histories):  # a family's own figures (e.g. routing, attention maps), per fold
            for path in sorted((run_dir / f"fold_{k}").glob("*.png")):
                tracker.log_artifact(path, f"fold_{k}")
        tracker.log_artifact(submission_path, "submission")

    result = {
        "run_name": run_name, "run_id": run_id, "model": config.model, "dataset": dataset.name,
        "metric": metric.name, "greater_is_better": metric.greater_is_better, "folds": fold_rows,
        **summary, "submission": str(submission_path), "run_dir": str(run_dir),
        "fold_file": str(fold_path), "tracking_uri": tracker.uri,
    }  # fmt: skip
    plots.print_results(result, log=log)
    return result


@dataclasses.dataclass
class FoldOutcome:
    """What one fold sends back to the runner (from this process or a worker)."""

    fold: int
    valid_pred: np.ndarray
    test_pred: np.ndarray
    score: float
    baseline: float
    explained: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    device: str
    valid_pred_final: np.ndarray | None = None  # with the last epoch's weights (final.pt), if the family can
    test_pred_final: np.ndarray | None = None


def resolve_devices(config: RunConfig) -> list[str]:
    """One device per worker: ``devices`` as given, else ``workers`` copies of ``device``."""
    if config.workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {config.workers}.")
    if config.devices:
        return [resolve_device(d.strip()) for d in config.devices.split(",")]
    return [resolve_device(config.device)] * config.workers


def _threads(config: RunConfig, devices: list[str]) -> int:
    """Torch threads per fold: part of the numerics (CPU reductions depend on it), so it is logged."""
    if config.threads_per_fold is not None:
        if config.threads_per_fold < 1:
            raise HarnessError(f"threads_per_fold must be at least 1, got {config.threads_per_fold}.")
        return config.threads_per_fold
    return max(1, (os.cpu_count() or 1) // min(len(devices), config.folds))


def _warn_if_busy(config: RunConfig, threads: int, log: Callable[[str], Any]) -> None:
    """Say so when the default thread count meets a machine already busy with other processes.

    Measured on 2 cores (``bench/bench_threads.py``): one thread per core is 1.15-1.3x faster than
    one thread on an idle machine, but 2.9-5.5x slower when other processes keep every core busy.
    The default stays fixed (thread counts change the numerics, so a default that followed the
    load would make one command give different numbers); the user chooses.
    """
    cores = os.cpu_count() or 1
    if config.threads_per_fold is not None or threads < 2 or not hasattr(os, "getloadavg"):
        return
    load = os.getloadavg()[0]
    if load >= cores / 2:
        log(f"The machine is busy (1-minute load {load:.1f} on {cores} cores): {threads} torch threads per fold will "
            "compete with other processes (3-5x slower than one thread on a busy 2-core machine, "
            "bench/bench_threads.py); threads_per_fold=1 avoids it.")  # fmt: skip


def fit_fold(config: RunConfig, dataset: Dataset, train_fold: np.ndarray, k: int, run_dir: Path,
             device: str, threads: int, log: Callable[[str], Any] = print) -> FoldOutcome:  # fmt: skip
    """Train fold ``k`` and predict its validation rows and the test set; no tracking here."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    seed_everything(config.seed + k)
    metric = get_metric(config.metric)
    adapter = get_task_adapter(dataset.task)
    train_part = dataset.train[train_fold != k]
    valid_part = dataset.train[train_fold == k]
    history: list[dict[str, float]] = []
    family = create_model(config.model, config.model_params)
    ctx = FitContext(
        dataset=dataset, metric=metric, train_config=config.train, device=device, seed=config.seed + k, fold=k,
        workdir=run_dir / f"fold_{k}", cache_dir=Path(config.data.root) / "cache",
        log_metrics=lambda logs, step: history.append(dict(logs)), log=log,
    )  # fmt: skip
    family.fit(train_part, valid_part, ctx)
    valid_pred = family.predict(valid_part)
    score = adapter.score(metric, dataset, valid_part, valid_pred)
    baseline = adapter.score(metric, dataset, valid_part, adapter.baseline(dataset, train_part, valid_part))
    seconds = time.perf_counter() - started
    log(f"fold {k}: {metric.name} {score:.4f} (baseline {baseline:.4f}) in {seconds:.0f}s on {device}")
    outcome = FoldOutcome(
        fold=k, valid_pred=valid_pred, test_pred=family.predict(dataset.test), score=score, baseline=baseline,
        explained={name: float(v) for name, v in family.explain().items()}, history=history, seconds=seconds,
        device=device,
    )  # fmt: skip
    final = ctx.workdir / "final.pt"
    if final.exists() and type(family).load_weights is not Family.load_weights:
        family.load_weights(load_checkpoint(final)["state_dict"])
        outcome.valid_pred_final = family.predict(valid_part)
        outcome.test_pred_final = family.predict(dataset.test)
    return outcome


def run_folds(config: RunConfig, dataset: Dataset, train_fold: np.ndarray, run_dir: Path, devices: list[str],
              log: Callable[[str], Any] = print, on_fold: Callable[[int, float], None] | None = None,
              finished: dict[int, FoldOutcome] | None = None,
              fold_done: Callable[[FoldOutcome], None] | None = None) -> list[FoldOutcome]:  # fmt: skip
    """Every fold, in fold order: sequentially, or in one worker process per device.

    Folds in ``finished`` (a resumed run's) are not trained again. ``fold_done`` gets each newly
    finished fold's outcome at once, in this process, before ``on_fold`` may stop the run. Workers
    are started with ``spawn`` (safe with CUDA and threads). The first failing fold stops the run
    with its error; folds already finished stay in ``run_dir``.
    """
    threads = _threads(config, devices)
    report = on_fold or (lambda fold, score: None)
    outcomes: dict[int, FoldOutcome] = dict(finished or {})
    for k in sorted(outcomes):
        report(k, outcomes[k].score)
    todo = [k for k in range(config.folds) if k not in outcomes]

    def done(outcome: FoldOutcome) -> None:
        outcomes[outcome.fold] = outcome
        if fold_done is not None:
            fold_done(outcome)
        report(outcome.fold, outcome.score)

    if len(devices) == 1:
        previous = torch.get_num_threads()
        try:
            for k in todo:
                done(fit_fold(config, dataset, train_fold, k, run_dir, devices[0], threads, log))
        finally:
            torch.set_num_threads(previous)
        return [outcomes[k] for k in range(config.folds)]
    with ProcessPoolExecutor(len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pool.submit(fit_fold, config, dataset, train_fold, k, run_dir, devices[i % len(devices)], threads): k
            for i, k in enumerate(todo)
        }  # fmt: skip
        for future in as_completed(futures):
            k = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:
                for pending in futures:
                    pending.cancel()
                finished_folds = ", ".join(map(str, sorted(outcomes))) or "none"
                raise HarnessError(f"fold {k} failed: {type(exc).__name__}: {' '.join(str(exc).split())} "
                                   f"(finished folds: {finished_folds}; they are kept in {run_dir})") from exc  # fmt: skip
            try:
                done(outcome)
            except BaseException:
                for pending in futures:
                    pending.cancel()
                raise
    return [outcomes[k] for k in range(config.folds)]


def new_run_name(model: str) -> str:
    return f"{model}-{uuid.uuid4().hex[:8]}"


def is_resumable(name: str) -> bool:
    """Whether run ``name`` left a folder to continue: started (``run.json``), not finished (no ``scores.json``)."""
    return (RUNS_DIR / name / "run.json").is_file() and not (RUNS_DIR / name / "scores.json").exists()


def find_run(name: str, model: str) -> Path:
    """The folder of run ``name`` (``<model>-<id>``), or with ``"last"`` the newest unfinished run of ``model``."""
    if name != "last":
        run_dir = RUNS_DIR / name
        if not (run_dir / "run.json").is_file():
            raise HarnessError(f"--resume {name}: no run folder {str(run_dir)!r} with a run.json to continue.")
        if (run_dir / "scores.json").is_file():
            raise HarnessError(f"--resume {name}: that run already finished ({run_dir / 'scores.json'} exists).")
        return run_dir
    candidates = [p.parent for p in RUNS_DIR.glob(f"{model}-*/run.json") if is_resumable(p.parent.name)]
    if not candidates:
        raise HarnessError(f"--resume last: no unfinished run of {model!r} in {str(RUNS_DIR)!r}.")
    return max(candidates, key=lambda p: (p / "run.json").stat().st_mtime_ns)


def _check_resumable(run_dir: Path, resolved: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The run's record, once its config, seed, fold file, data and threads are this run's."""
    recorded = json.loads((run_dir / "run.json").read_text())
    before = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    now = flatten(resolved)
    for key in sorted(set(before) | set(now)):
        if key not in _RESUMABLE_CHANGES and before.get(key) != now.get(key):
            raise HarnessError(
                f"--resume {run_dir.name}: {key} was {before.get(key)!r} in that run, now {now.get(key)!r}; "
                "a resumed run must have the same settings."
            )
    for key, value in record.items():
        if recorded.get(key) != value:
            hint = " (set threads_per_fold to match)" if key == "threads_per_fold" else ""
            raise HarnessError(
                f"--resume {run_dir.name}: {key} was {recorded.get(key)!r} in that run, now {value!r}{hint}."
            )
    return recorded


def _finished_folds(run_dir: Path, n_folds: int) -> dict[int, FoldOutcome]:
    outcomes = {}
    for k in range(n_folds):
        path = run_dir / f"fold_{k}" / "outcome.pkl"
        if path.is_file():
            outcomes[k] = pickle.loads(path.read_bytes())
    return outcomes


def _per_fold_frame(adapter, ids: pd.Series, predictions: list[np.ndarray]) -> pd.DataFrame:
    """``id, fold_0, fold_1, ...``: each fold model's predictions side by side."""
    frame = pd.concat([adapter.to_frame(ids, pred, f"fold_{k}") for k, pred in enumerate(predictions)], axis=1)
    return frame.loc[:, ~frame.columns.duplicated()]


def _best_epoch(history: list[dict[str, float]], metric) -> int | None:
    key = f"valid_{metric.name}"
    scores = [h[key] for h in history if key in h]
    if not scores:
        return None
    return 1 + int(np.argmax(scores) if metric.greater_is_better else np.argmin(scores))  # epochs count from 1

"""Tuning: fold-level pruning, resumable capped studies, best parameters, nested MLflow runs."""

from __future__ import annotations

import dataclasses
import datetime

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models
from optuna.trial import TrialState

from harness import registry
from harness.errors import HarnessError
from harness.tune import load_best_params, storage_url, tune

LR = optuna.distributions.CategoricalDistribution([1e-6, 1e-2])


def _layers(views_dir):
    return ({"folds": 3, "data": {"dir": str(views_dir)}, "train": {"epochs": 2, "progress": False}},)


def _bad_or_good(trial):
    """Test-only space: lr 1e-6 barely moves the heads, so bad trials exist to prune."""
    return {"train": {"lr": trial.suggest_categorical("train.lr", LR.choices)}}


@pytest.fixture
def bimodal(monkeypatch):
    entry = registry.get_model_entry("clip_multimodal")
    monkeypatch.setitem(registry._MODELS, "clip_multimodal", dataclasses.replace(entry, search_space=_bad_or_good))


def _study(name):
    return optuna.load_study(study_name=name, storage=storage_url(None))


def test_storage_url(workdir):
    assert storage_url(None) == f"sqlite:///{workdir / 'leaderboard' / 'optuna.db'}"
    assert (workdir / "leaderboard").is_dir()
    assert storage_url("postgresql://user@host/db") == "postgresql://user@host/db"


def test_tune_prunes_saves_best_and_nests_runs(workdir, views_dir, bimodal):
    lines = []
    result = tune("clip_multimodal", 4, layers=_layers(views_dir), study_name="s", log=lines.append)

    assert result["n_complete"] + result["n_pruned"] == 4 and result["n_failed"] == 0
    assert result["n_pruned"] >= 1
    states = [t.state for t in _study("s").trials]
    assert TrialState.FAIL not in states and states.count(TrialState.PRUNED) == result["n_pruned"]
    assert any(line.startswith("trial 3 (4/4 finished):") and "best so far" in line for line in lines)
    assert "outside the search space, so sampled: train.lr=" in lines[0]  # the default lr is not a choice

    # best parameters: nested overrides, loadable as a config layer
    assert result["best_params"] == {"train": {"lr": 1e-2}}
    assert load_best_params("clip_multimodal") == result["best_params"]

    # every trial is an MLflow run nested under the study's parent run
    import mlflow

    runs = mlflow.search_runs(experiment_names=["views"])
    parent = runs[runs["tags.kind"] == "study"]
    assert len(parent) == 1 and parent["tags.study"].iloc[0] == "s"
    trials = runs[runs["tags.kind"] == "trial"]
    assert len(trials) == 4
    assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}


def test_resume_continues_the_count_and_retries_a_dead_workers_trial(workdir, views_dir, bimodal):
    tune("clip_multimodal", 2, layers=_layers(views_dir), study_name="r", log=lambda m: None)

    # a worker that died mid-trial: RUNNING, its last heartbeat far older than the grace period
    dead = _study("r").ask({"train.lr": LR})
    storage = optuna.storages.RDBStorage(storage_url(None))
    storage.record_heartbeat(dead._trial_id)
    with storage.scoped_session() as session:
        beat = session.query(models.TrialHeartbeatModel).filter_by(trial_id=dead._trial_id).one()
        beat.heartbeat = datetime.datetime(2000, 1, 1)
        session.commit()

    result = tune("clip_multimodal", 4, layers=_layers(views_dir), study_name="r", log=lambda m: None)

    trials = _study("r").trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert trials[dead.number].state == TrialState.FAIL and result["n_failed"] == 1
    retried = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == dead.number]
    assert len(retried) == 1 and retried[0].state != TrialState.FAIL

    # already full: nothing runs, the count stays
    lines = []
    tune("clip_multimodal", 4, layers=_layers(views_dir), study_name="r", log=lines.append)
    assert len(_study("r").trials) == len(trials) and "already has 4 finished trials" in lines[0]


def test_errors(workdir, monkeypatch):
    with pytest.raises(HarnessError, match="run `python run.py tune --model clip_multimodal` first"):
        load_best_params("clip_multimodal")

    entry = registry.get_model_entry("clip_multimodal")
    monkeypatch.setitem(registry._MODELS, "clip_multimodal", dataclasses.replace(entry, search_space=None))
    with pytest.raises(HarnessError, match="no search space"):
        tune("clip_multimodal", 1)


def test_direction_mismatch(workdir, views_dir, bimodal):
    optuna.create_study(study_name="d", storage=storage_url(None), direction="maximize")
    with pytest.raises(HarnessError, match="needs minimize"):
        tune("clip_multimodal", 1, layers=_layers(views_dir), study_name="d")


def test_a_new_study_starts_from_the_configuration_as_given(workdir, tmp_path):
    from harness.cv import make_run_config, run_cv
    from harness.data.movielens import generate_movielens

    data = tmp_path / "movielens"
    generate_movielens(data, n_users=60, n_items=120, mean_length=25)
    layers = ({"folds": 2, "data": {"dir": str(data)}, "tracking": False},)
    lines = []
    result = tune("popularity", 3, layers=layers, study_name="p", log=lines.append)

    trial_0 = _study("p").trials[0]
    assert trial_0.params == {"model.window": 0} and trial_0.user_attrs["defaults"] is True
    assert lines[0] == "study p: trial 0 runs the configuration as given (model.window=0)"
    untuned = run_cv(make_run_config("popularity", *layers), log=lambda m: None)["cv_ndcg@10_full_mean"]
    assert trial_0.value == pytest.approx(untuned) and result["best_value"] >= untuned
    numbers = [int(line.split()[1]) for line in lines if line.startswith("trial ")]
    assert numbers == [0, 1, 2]  # Optuna's numbering, in the progress lines and the summary
    assert lines[-1].endswith(f"(trial {_study('p').best_trial.number}), params in leaderboard/best_params/popularity.yaml")


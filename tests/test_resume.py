"""Runs that survive interruption: a real SIGKILL after a fold, then --resume (or a tuning worker's retry), gives the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

import harness.tune
import run
from harness.tracking import Tracker
from harness.tune import storage_url, tune

RUN_PY = Path(run.__file__).resolve()


def _command(data):
    return [sys.executable, str(RUN_PY), "--model", "clip_multimodal", "--folds", "3", "--data", str(data),
            "train.epochs=25", "train.progress=false", "threads_per_fold=1"]  # fmt: skip


def _kill_after_first_fold(cwd: Path, command: list[str]) -> Path:
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        done = list((cwd / "leaderboard" / "runs").glob("*/fold_0/outcome.pkl"))
        if done:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return done[0].parent.parent
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"the run ended (exit {process.poll()}) before fold 0's outcome appeared")


@pytest.fixture(scope="module")
def straight(views_template, tmp_path_factory):
    """The folder of an uninterrupted run of :func:`_command`."""
    cwd = tmp_path_factory.mktemp("straight")
    subprocess.run(_command(views_template), cwd=cwd, check=True, capture_output=True)
    return next((cwd / "leaderboard" / "runs").glob("clip_multimodal-*"))


def test_sigkill_after_fold_0_then_resume_gives_the_uninterrupted_bytes(tmp_path, views_template, straight,
                                                                         monkeypatch, capsys):  # fmt: skip
    killed = tmp_path / "killed"
    killed.mkdir()
    run_dir = _kill_after_first_fold(killed, _command(views_template))
    assert not (run_dir / "scores.json").exists(), "the kill came too late: the run had finished"
    assert (run_dir / "run.json").exists() and (run_dir / "config.yaml").exists()

    monkeypatch.chdir(killed)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the killed run is still RUNNING in MLflow until the next start notices its process is gone
    closed = Tracker("views").close_dead_runs()  # and fold 0's run, if the kill came while it was being logged
    assert run_dir.name in closed and set(closed) <= {run_dir.name, f"{run_dir.name}-fold_0"}
    assert mlflow.search_runs(experiment_names=["views"], filter_string="tags.kind = 'cv'")["status"].tolist() == ["KILLED"]

    # a different setting is refused, naming the key
    code = run.main(_command(views_template)[2:] + ["train.lr=0.5", "--resume", "last"])
    assert code == 2 and "train.lr was 0.001 in that run, now 0.5" in capsys.readouterr().err

    subprocess.run(_command(views_template) + ["--resume", "last"], cwd=killed, check=True, capture_output=True)
    first = straight
    for name in ("oof.parquet", "test_predictions.parquet"):
        assert (run_dir / name).read_bytes() == (first / name).read_bytes(), name
    scores = [json.loads((d / "scores.json").read_text()) for d in (first, run_dir)]
    assert scores[0]["cv_msle_mean"] == scores[1]["cv_msle_mean"]
    assert scores[0]["folds"][0]["msle"] == scores[1]["folds"][0]["msle"]
    # one parent run on the leaderboard's store, finished, with its three fold runs
    runs = mlflow.search_runs(experiment_names=["views"])
    parents = runs[runs["tags.kind"] == "cv"]
    assert parents["status"].tolist() == ["FINISHED"] and parents["tags.mlflow.runName"].tolist() == [run_dir.name]
    assert sorted(runs.loc[runs["tags.fold"].notna(), "tags.fold"]) == ["0", "1", "2"]
    assert os.path.exists(killed / "submissions" / f"{run_dir.name}.csv")
    # nothing left to resume
    code = run.main(_command(views_template)[2:] + ["--resume", run_dir.name])
    assert code == 2 and "already finished" in capsys.readouterr().err


def test_a_tuning_worker_killed_after_fold_0_is_retried_by_resuming_its_cv_run(tmp_path, views_template, straight,
                                                                              monkeypatch):  # fmt: skip
    """Trial 0 runs the configuration as given, so its retry must end with the straight run's bytes."""
    command = [sys.executable, str(RUN_PY), "tune", *_command(views_template)[2:], "--trials", "1"]
    run_dir = _kill_after_first_fold(tmp_path, command)
    fold_0 = (run_dir / "fold_0" / "outcome.pkl").read_bytes()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(harness.tune, "_HEARTBEAT_S", 1)
    monkeypatch.setattr(harness.tune, "_GRACE_S", 1)  # the dead worker's last heartbeat is already older
    time.sleep(1.5)
    lines = []
    result = tune("clip_multimodal", 1, layers=run.config_layers(run.tune_parser().parse_args(command[3:])),
                  log=lines.append)  # fmt: skip

    trials = optuna.load_study(study_name=result["study"], storage=storage_url(None)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["cv_run"] == trials[1].user_attrs["cv_run"] == run_dir.name
    assert f"trial 1 retries a trial whose worker died: resuming its CV run {run_dir.name}" in lines
    assert (run_dir / "fold_0" / "outcome.pkl").read_bytes() == fold_0  # loaded, not trained again
    for name in ("oof.parquet", "test_predictions.parquet"):
        assert (run_dir / name).read_bytes() == (straight / name).read_bytes(), name
    assert trials[1].value == json.loads((straight / "scores.json").read_text())["cv_msle_mean"]

"""MLflow tracking: the store and the artifact location are chosen once, explicitly."""

import mlflow
import pytest

from harness.tracking import Tracker, artifact_location


@pytest.mark.parametrize("env_uri", [None, "other.db", "http://mlflow.example:5000"])
def test_artifacts_land_under_leaderboard_unless_a_server_keeps_them(workdir, monkeypatch, env_uri):
    if env_uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = f"sqlite:///{workdir / 'leaderboard' / 'mlflow.db'}"
    elif env_uri.startswith("http"):
        assert artifact_location(env_uri) is None  # the server's own artifact store
        return
    else:
        uri = f"sqlite:///{workdir / env_uri}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker("toy")
    (workdir / "note.txt").write_text("hello")
    with tracker.run("r"):
        tracker.log_artifact(workdir / "note.txt")
    assert tracker.uri == uri
    experiment = mlflow.get_experiment_by_name("toy")
    assert experiment.artifact_location == (workdir / "leaderboard" / "artifacts").as_uri()
    assert list((workdir / "leaderboard" / "artifacts").rglob("note.txt")) and not (workdir / "mlruns").exists()


def test_a_half_logged_fold_run_is_deleted_so_the_fold_is_logged_again(workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker("toy")
    client = mlflow.tracking.MlflowClient()
    with tracker.run("cv") as parent:
        with tracker.run("cv-fold_0", nested=True, tags={"fold": "0"}) as killed:
            pass
        client.set_terminated(killed, status="KILLED")  # as close_dead_runs leaves a kill during logging
        assert not tracker.has_finished_child_run(parent, "fold", "0")
        assert client.get_run(killed).info.lifecycle_stage == "deleted"
        with tracker.run("cv-fold_0", nested=True, tags={"fold": "0"}):
            pass
        assert tracker.has_finished_child_run(parent, "fold", "0")
        assert not tracker.has_finished_child_run(parent, "fold", "1")

"""The CLIP views regressor end to end on data in the real format."""

import mlflow
import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

from harness.cv import make_run_config, run_cv
from harness.data.views import generate_views
from harness.errors import HarnessError
from models.clip_encoder import load_clip

QUIET = {"train": {"progress": False}, "threads_per_fold": 1}  # one thread: 5x faster on a busy machine


def _cv(data_dir, *layers, folds=3, tracking=False):
    config = make_run_config("clip_multimodal", QUIET, {"folds": folds, "tracking": tracking, "data": {"dir": str(data_dir)}}, *layers)
    return run_cv(config, log=lambda message: None)


def test_cv_beats_the_mean_target_baseline_on_the_embedded_data(workdir):
    """The default job (embedded data, 3 folds) with MLflow tracking on."""
    config = make_run_config("clip_multimodal", QUIET, {"folds": 3})
    result = run_cv(config, log=lambda message: None)

    assert result["oof_msle"] < 0.6 * result["baseline_msle_mean"], result
    assert all(row["msle"] < row["baseline_msle"] for row in result["folds"])

    submission = pd.read_csv(result["submission"])
    test = pd.read_csv(workdir / "data" / "views" / "test.csv")
    assert list(submission.columns) == ["id", "views"] and submission["id"].tolist() == test["id"].tolist()
    oof = pd.read_parquet(f"{result['run_dir']}/oof.parquet")
    assert len(oof) == 2000 and set(oof["fold"]) == {0, 1, 2}
    for name in ("test_predictions.parquet", "scores.json", "config.yaml", "weights.png", "learning_curves.png"):
        assert (workdir / result["run_dir"] / name).exists(), name

    mlflow.set_tracking_uri(result["tracking_uri"])
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["seed"] == "42" and run.data.params["model_params.freeze_clip"] == "True"
    assert run.data.tags["git_commit"] and "version.torch" in run.data.tags
    history = mlflow.tracking.MlflowClient().get_metric_history(result["run_id"], "fold_0/weights/image")
    assert len(history) >= 2
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert len(children) == 3
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(result["run_id"])}
    assert {"oof.parquet", "test_predictions.parquet", "weights.png", "submission"} <= artifacts


@pytest.mark.parametrize("modality", ["image", "text", "age"])
def test_the_modality_carrying_the_signal_gets_the_largest_weight(workdir, tmp_path, modality):
    strengths = {name: float(name == modality) for name in ("image", "text", "age")}
    data_dir = tmp_path / modality
    generate_views(data_dir, seed=1, n_train=600, n_test=20, strengths=strengths)
    result = _cv(data_dir, folds=2)
    for row in result["folds"]:
        weights = {name: row[f"weights/{name}"] for name in ("image", "text", "age")}
        assert max(weights, key=weights.get) == modality, weights
    assert result["oof_msle"] < result["baseline_msle_mean"]


def test_same_seed_gives_identical_oof_predictions(workdir, views_dir):
    first = _cv(views_dir, {"train": {"epochs": 3}}, folds=2)
    second = _cv(views_dir, {"train": {"epochs": 3}}, folds=2)
    a = pd.read_parquet(f"{first['run_dir']}/oof.parquet")
    b = pd.read_parquet(f"{second['run_dir']}/oof.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_trainable_towers_train_end_to_end(workdir, views_dir):
    result = _cv(views_dir, {"model": {"freeze_clip": False}, "train": {"epochs": 2}}, folds=2)
    assert np.isfinite(result["oof_msle"])


def test_pretrained_weights_load_from_a_checkpoint_file(tmp_path, workdir, views_dir):
    torch.manual_seed(123)
    model = open_clip.create_model("ViT-Tiny-16-64", pretrained=None)
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)

    loaded = load_clip("ViT-Tiny-16-64", str(checkpoint), log=lambda message: None)
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor), key
    result = _cv(views_dir, {"model": {"pretrained": str(checkpoint)}, "train": {"epochs": 2}}, folds=2)
    assert np.isfinite(result["oof_msle"])


def test_corrupt_or_missing_checkpoints_are_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(HarnessError, match="Could not load CLIP 'ViT-Tiny-16-64' from checkpoint .*corrupt.pt"):
        load_clip("ViT-Tiny-16-64", str(corrupt))
    with pytest.raises(HarnessError, match="does not exist"):
        load_clip("ViT-Tiny-16-64", str(tmp_path / "missing.pt"))
    with pytest.raises(HarnessError, match="Unknown open_clip model 'ViT-Nope'"):
        load_clip("ViT-Nope", None)


def test_frozen_features_are_cached_and_reused(workdir, views_dir):
    _cv(views_dir, {"train": {"epochs": 1}}, folds=2)
    cached = sorted((workdir / "data" / "cache").glob("clip-*.pt"))
    assert cached, "no feature cache written"
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    _cv(views_dir, {"train": {"epochs": 1}}, folds=2)
    assert {p: p.stat().st_mtime_ns for p in sorted((workdir / "data" / "cache").glob("clip-*.pt"))} == stamps


def test_parallel_folds_give_the_same_oof_as_sequential_folds(workdir, views_dir):
    layers = ({"train": {"epochs": 3}, "threads_per_fold": 1},)
    sequential = _cv(views_dir, *layers, folds=2)
    parallel = _cv(views_dir, *layers, {"workers": 2}, folds=2)
    a = pd.read_parquet(f"{sequential['run_dir']}/oof.parquet")
    b = pd.read_parquet(f"{parallel['run_dir']}/oof.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert [row["msle"] for row in sequential["folds"]] == [row["msle"] for row in parallel["folds"]]

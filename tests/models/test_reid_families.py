"""The re-ID families end to end: beat trivial baselines, rank on the leaderboard, mask modalities, repeat exactly."""


import numpy as np
import pandas as pd
import pytest
import torch

import run
from harness.cv import make_run_config, run_cv
from harness.data.reid import (colour_histogram_features, generate_reid, load_reid_pixels, raw_pixel_features,
                               read_market1501)  # fmt: skip
from harness.tasks.reid import TASK, ReIDEmbeddings

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"batch_size": 32, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("reid") / "market1501"
    generate_reid(root, n_train_ids=300, n_test_ids=100, n_distractors=20, n_junk=2)
    return root


def _cv(workdir, data, model, epochs, **params):
    config = make_run_config(model, {"folds": 2, "workers": 2, "threads_per_fold": 1, "data": {"dir": str(data)}},
                             {"train": {"epochs": epochs, **FAST}, "model": {"augmentation": "none", **params}})  # fmt: skip
    return run_cv(config, log=lambda message: None)


def _trivial_map(data) -> float:
    dataset = read_market1501(data)
    pixels = load_reid_pixels(dataset, dataset.test)
    return max(TASK.metrics(dataset.test, ReIDEmbeddings(f(pixels), np.zeros(len(pixels))))["map"]
               for f in (colour_histogram_features, raw_pixel_features))  # fmt: skip


def test_both_families_beat_nearest_neighbour_baselines_and_rank_on_the_leaderboard(workdir, market, capsys):
    trivial = _trivial_map(market)
    moe = _cv(workdir, market, "multiscale_moe_reid", 8)
    bot = _cv(workdir, market, "bot_reid", 8)
    for result in (moe, bot):
        assert result["test_map"] > 3 * trivial and result["cv_map_mean"] > 2 * result["baseline_map_mean"], result
        assert {"test_rank1", "test_rank5", "test_minp", "oof_map", "test_n_queries"} <= set(result)
    submission = pd.read_csv(moe["submission"])
    assert list(submission.columns) == ["id", "gallery"] and submission["id"].str.startswith("query/").all()
    assert run.main(["leaderboard", "--dataset", "market1501", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert moe["run_name"] in out and bot["run_name"] in out
    code = run.main(["ensemble", "--runs", f"{moe['run_id']},{bot['run_id']}", "--method", "mean"])
    assert code == 0
    blended = pd.read_csv(next((workdir / "submissions").glob("ensemble-mean-*.csv")))
    assert len(blended) == len(submission)


@pytest.fixture(scope="module")
def rgbnt(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgbnt") / "rgbnt201"
    generate_reid(root, layout="rgbnt201", n_train_ids=24, n_test_ids=8, cams_per_id=3, images_per_id_cam=1)
    for path in sorted((root / "train_171" / "TI").iterdir())[:5]:  # five training samples lack their thermal image
        path.unlink()
    return root


def test_cross_modal_runs_mask_a_missing_modality_and_repeat_exactly(workdir, rgbnt):
    def once(name):
        config = make_run_config("multiscale_moe_reid", {
            "folds": 2, "threads_per_fold": 1, "seed": 3, "tracking": False, "data": {
                "name": "rgbnt201", "dir": str(rgbnt), "options": {"missing_modality": "mask"}},
            "folds_dir": str(workdir / name), "submissions_dir": str(workdir / name),
        }, {"train": {"epochs": 1, "batch_size": 16, "progress": False}, "model": {"instances_per_id": 2}})  # fmt: skip
        return run_cv(config, log=lambda message: None)

    first, second = once("a"), once("b")
    oofs = [pd.read_parquet(f"{r['run_dir']}/oof.parquet") for r in (first, second)]
    pd.testing.assert_frame_equal(oofs[0], oofs[1])  # same seed -> identical out-of-fold embeddings
    assert {"modality_weights/fused/ti", "scale_weights/ni/4px", "stability/modalities"} <= set(first["folds"][0])

    from models.multiscale_moe_reid import MultiScaleMoEConfig, MultiScaleMoEReID

    network = MultiScaleMoEReID(MultiScaleMoEConfig(), 10, ("rgb", "ni", "ti"), (64, 32)).eval()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    images = torch.randn(2, 3, 3, 64, 32)
    out = network(images, mask)
    assert out["modality_weights"][0, 2] == 0 and out["modality_weights"][1, 2] > 0
    changed = images.clone()
    changed[0, 2] = 100.0  # whatever a missing modality holds, the row's embedding does not change
    torch.testing.assert_close(network.embed(changed, mask)[0], network.embed(images, mask)[0])


def _error_line(capsys, *argv):
    code = run.main(list(argv))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, errors
    return errors[0]


def test_a_missing_modality_file_is_a_one_line_error_by_default(capsys, workdir, rgbnt):
    line = _error_line(capsys, "--model", "bot_reid", "--data", str(rgbnt), "data.name=rgbnt201", "train.epochs=1",
                       "tracking=false")  # fmt: skip
    assert "TI" in line and ".jpg" in line and "missing_modality" in line


def test_more_folds_than_identities_is_a_one_line_error(capsys, workdir, rgbnt):
    line = _error_line(capsys, "--model", "bot_reid", "--data", str(rgbnt), "--folds", "30", "data.name=rgbnt201",
                       "data.options.missing_modality=mask", "tracking=false")  # fmt: skip
    assert "--folds 30 is more than the 24 groups ('pid' values)" in line
    assert not (workdir / "submissions").exists()


@pytest.mark.parametrize("name", ["multiscale_moe_reid", "bot_reid"])
def test_search_space_gives_valid_configs(name):
    import optuna

    from harness.config import TrainConfig, check_train_config
    from harness.registry import create_model, get_model_entry

    entry = get_model_entry(name)
    for seed in range(4):
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
        params = entry.search_space(trial)
        assert set(params) <= {"model", "train"}
        create_model(name, params["model"])
        check_train_config(TrainConfig(**params["train"]))


@pytest.mark.parametrize("params, match", [
    ({"fusion": "attention"}, "model.fusion must be one of moe, mlp"),
    ({"gate_depth": 4}, "model.gate_depth must be 1, 2 or 3"),
    ({"temperature": 0}, "model.temperature must be > 0"),
])  # fmt: skip
def test_bad_multiscale_settings_are_one_line_errors(params, match):
    from harness.errors import HarnessError
    from harness.registry import create_model

    with pytest.raises(HarnessError, match=match):
        create_model("multiscale_moe_reid", params)


def test_scales_must_fit_the_backbone_and_the_image():
    from harness.errors import HarnessError
    from models.multiscale_moe_reid import MultiScaleMoEConfig, MultiScaleMoEReID

    with pytest.raises(HarnessError, match=r"model.scales \[2\] are not multiples of the backbone's stride 4"):
        MultiScaleMoEReID(MultiScaleMoEConfig(scales=[2, 8]), 5, ("rgb",), (64, 32))
    with pytest.raises(HarnessError, match="a 128-px window is larger than the 64x32 images"):
        MultiScaleMoEReID(MultiScaleMoEConfig(scales=[4, 128]), 5, ("rgb",), (64, 32))

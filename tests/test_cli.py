"""The command line: success path, and one-line errors with nothing half-written on bad input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import run

FAST = ["train.epochs=2", "train.progress=false", "tracking=false"]


def _run(capsys, *argv):
    code = run.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _nothing_written(workdir):
    """No submission, and no partial file anywhere (a complete fold file may precede a failure in training)."""
    assert not (workdir / "submissions").exists() or not any((workdir / "submissions").iterdir())
    assert not [p for p in workdir.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name]


def test_list_models(capsys):
    code, out, _ = _run(capsys, "--list-models")
    assert code == 0 and "clip_multimodal" in out and "regression" in out


def test_a_run_writes_folds_and_a_submission(capsys, workdir, views_dir):
    code, out, err = _run(capsys, "--model", "clip_multimodal", "--folds", "2", "--data", str(views_dir), *FAST)
    assert code == 0, err
    submission = next((workdir / "submissions").glob("clip_multimodal-*.csv"))
    frame = pd.read_csv(submission)
    assert list(frame.columns) == ["id", "views"] and len(frame) == 12 and (frame["views"] >= 0).all()
    assert len(list((workdir / "folds").glob("views-*__stratified__k2__s42.csv"))) == 1
    assert "CV msle" in out and "randomly initialised" in out


def _expect_error(capsys, workdir, argv, *fragments):
    code, _, err = _run(capsys, *argv)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    _nothing_written(workdir)
    return lines[0]


def test_unknown_model(capsys, workdir):
    _expect_error(capsys, workdir, ["--model", "nope"], "Unknown model 'nope'", "clip_multimodal")


def test_a_model_on_another_tasks_dataset_names_the_models_that_fit(capsys, workdir):
    _expect_error(capsys, workdir, ["--model", "diff_moe", "data.name=flickr8k"],
                  "solves 'classification' but dataset 'flickr8k' is 'retrieval'", "diff_moe_retrieval, dual_encoder")  # fmt: skip


def test_unknown_override_key(capsys, workdir, views_dir):
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), "train.lrr=1"], "train.lrr")


@pytest.mark.parametrize("setting, fragment", [
    ("train.lr=-1", "train.lr must be a finite number > 0, got -1"),
    ("train.epochs=0", "train.epochs must be a positive integer, got 0"),
    ("train.warmup_ratio=1", "train.warmup_ratio must be in [0, 1), got 1"),
    ("train.patience=0", "train.patience must be a positive integer, got 0"),
    ("train.grad_clip=-0.5", "train.grad_clip must be a finite number >= 0, got -0.5"),
])  # fmt: skip
def test_training_settings_are_checked_before_anything_is_written(capsys, workdir, views_dir, setting, fragment):
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), setting], fragment)
    assert not (workdir / "folds").exists() and not (workdir / "leaderboard").exists()


def test_missing_column(capsys, workdir, views_dir):
    train = pd.read_csv(views_dir / "train.csv").drop(columns=["title"])
    train.to_csv(views_dir / "train.csv", index=False)
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), *FAST], "train.csv", "title")
    assert not (workdir / "folds").exists()


@pytest.mark.parametrize("value, fragment", [(float("nan"), "NaN"), (-5.0, "negative")])
def test_bad_target(capsys, workdir, views_dir, value, fragment):
    train = pd.read_csv(views_dir / "train.csv")
    train.loc[3, "views"] = value
    train.to_csv(views_dir / "train.csv", index=False)
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), *FAST], "views", fragment)


def test_missing_thumbnail_is_an_error_by_default(capsys, workdir, views_dir):
    victim = sorted((views_dir / "thumbnails").iterdir())[0]
    victim.unlink()
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), *FAST], victim.name)


def test_unreadable_thumbnail_can_be_masked(capsys, workdir, views_dir):
    victim = sorted((views_dir / "thumbnails").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="1 of 60 thumbnails"):
        code, _, err = _run(capsys, "--model", "clip_multimodal", "--data", str(views_dir), "--folds", "2",
                            "data.options.on_bad_image=zero", *FAST)  # fmt: skip
    assert code == 0, err


def test_empty_test_set(capsys, workdir, views_dir):
    test = pd.read_csv(views_dir / "test.csv")
    test.iloc[:0].to_csv(views_dir / "test.csv", index=False)
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), *FAST], "test.csv")


@pytest.mark.parametrize("folds, fragment", [("1", "at least 2, got 1"), ("49", "more than the 48 training rows")])
def test_impossible_fold_count(capsys, workdir, views_dir, folds, fragment):
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), "--folds", folds, *FAST], fragment)


def test_corrupt_checkpoint(capsys, workdir, views_dir, tmp_path):
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"\x00garbage" * 100)
    _expect_error(
        capsys, workdir,
        ["--model", "clip_multimodal", "--data", str(views_dir), f"model.pretrained={checkpoint}", *FAST],
        "clip.pt",
    )  # fmt: skip


def test_missing_data_directory(capsys, workdir):
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", "no/such/dir"], "no/such/dir")


def test_a_failing_fold_in_a_worker_stops_the_run_with_its_error(capsys, workdir, views_dir, tmp_path):
    checkpoint = tmp_path / "broken.pt"
    checkpoint.write_bytes(b"broken")
    line = _expect_error(
        capsys, workdir,
        ["--model", "clip_multimodal", "--data", str(views_dir), "--workers", "2", f"model.pretrained={checkpoint}", *FAST],
        "failed", "broken.pt",
    )  # fmt: skip
    assert line.startswith("error: fold ")


def test_ensemble_and_leaderboard_commands(capsys, workdir, views_dir):
    from harness.cv import make_run_config, run_cv

    runs = [
        run_cv(make_run_config("clip_multimodal", {"folds": 2, "data": {"dir": str(views_dir)}},
                               {"train": {"epochs": 2, "progress": False}, "model": {"hidden_dim": width}}),
               log=lambda message: None)
        for width in (8, 16)
    ]  # fmt: skip
    ids = ",".join(run["run_id"] for run in runs)
    code, _, err = _run(capsys, "ensemble", "--runs", ids, "--method", "weighted_mean", "--weights", "0.25,0.75")
    assert code == 0, err
    assert len(list((workdir / "submissions").glob("ensemble-weighted_mean-*.csv"))) == 1
    code, out, err = _run(capsys, "leaderboard", "--dataset", "views", "--format", "csv")
    assert code == 0, err
    assert all(run["run_name"] in out for run in runs) and "ensemble" in out
    code, _, err = _run(capsys, "ensemble", "--runs", ids, "--method", "weighted_mean", "--weights", "a,b")
    assert code == 2 and "--weights must be comma-separated numbers" in err


def test_tune_then_reuse_the_best_params(capsys, workdir, views_dir):
    code, out, err = _run(capsys, "tune", "--model", "clip_multimodal", "--folds", "2", "--trials", "2",
                          "--data", str(views_dir), "train.epochs=1", "train.progress=false")  # fmt: skip
    assert code == 0, err
    assert "best params: " in out and (workdir / "leaderboard" / "best_params" / "clip_multimodal.yaml").exists()
    code, _, err = _run(capsys, "--model", "clip_multimodal", "--folds", "2", "--data", str(views_dir),
                        "--params", "best", *FAST)  # fmt: skip
    assert code == 0, err


def test_best_params_before_tuning_is_an_error(capsys, workdir, views_dir):
    _expect_error(capsys, workdir, ["--model", "clip_multimodal", "--data", str(views_dir), "--params", "best"],
                  "run.py tune")  # fmt: skip


def test_fold_model_ensembles_with_best_or_final_checkpoints(capsys, workdir, views_dir):
    from harness.cv import make_run_config, run_cv

    result = run_cv(make_run_config("clip_multimodal", {"folds": 2, "data": {"dir": str(views_dir)}},
                                    {"train": {"epochs": 3, "progress": False}}), log=lambda message: None)  # fmt: skip
    run_dir = workdir / result["run_dir"]
    for checkpoint, flag, suffix in (("best", "true", ""), ("final", "false", "_final")):
        code, out, err = _run(capsys, "ensemble", "--runs", result["run_id"], "--fold-models", "--method", "median",
                              "--use-best-checkpoint", flag)  # fmt: skip
        assert code == 0, err
        submission = pd.read_csv(workdir / "submissions" / f"{result['run_name']}-folds-median-{checkpoint}.csv")
        per_fold = pd.read_parquet(run_dir / f"test_predictions{suffix}.parquet")
        assert np.allclose(submission["views"], per_fold[["fold_0", "fold_1"]].median(axis=1))
    best = pd.read_parquet(run_dir / "oof.parquet")
    final = pd.read_parquet(run_dir / "oof_final.parquet")
    assert best["id"].tolist() == final["id"].tolist() and best["fold"].tolist() == final["fold"].tolist()


@pytest.fixture(scope="module")
def movielens_template(tmp_path_factory):
    from harness.data.movielens import generate_movielens

    root = tmp_path_factory.mktemp("ml") / "movielens"
    generate_movielens(root, n_users=80, n_items=120, mean_length=25)
    return root


def test_a_recommendation_run_reports_every_protocol(capsys, workdir, movielens_template):
    code, out, err = _run(capsys, "--model", "popularity", "--data", str(movielens_template),
                          "data.options.negative_sampling=popularity", *FAST)  # fmt: skip
    assert code == 0, err
    assert "CV ndcg@10_full" in out and "oof sampled" in out and "test full" in out
    submission = pd.read_csv(next((workdir / "submissions").glob("popularity-*.csv")))
    assert list(submission.columns) == ["user_id", "items"] and len(submission) == 80
    assert len(list((workdir / "folds").glob("movielens-*__kfold__k3__s42.csv"))) == 1


def test_recommendation_metric_must_be_a_ranking_metric(capsys, workdir, movielens_template):
    _expect_error(capsys, workdir, ["--model", "sasrec", "--data", str(movielens_template), "metric=msle"],
                  "Metric 'msle' is for 'regression'")  # fmt: skip


def test_a_ratings_file_with_a_bad_line(capsys, workdir, movielens_template, tmp_path):
    import shutil

    data = Path(shutil.copytree(movielens_template, tmp_path / "bad"))
    with open(data / "ratings.dat", "a", encoding="latin-1") as handle:
        handle.write("17::not-a-movie::4::978300760\n")
    _expect_error(capsys, workdir, ["--model", "popularity", "--data", str(data)], "ratings.dat", "line")


def test_ensembles_of_recommendation_runs_fuse_their_lists(capsys, workdir, movielens_template):
    argv = ["--model", "popularity", "--data", str(movielens_template), "train.progress=false"]
    assert _run(capsys, *argv)[0] == 0 and _run(capsys, *argv, "model.window=5")[0] == 0
    for method in ("mean", "rank_mean"):
        code, out, err = _run(capsys, "ensemble", "--top", "2", "--dataset", "movielens", "--method", method)
        assert code == 0, err
        assert f"ensemble-{method}" in out and "OOF ndcg@10_full" in out
    submissions = sorted((workdir / "submissions").glob("ensemble-*.csv"))
    assert len(submissions) == 2 and list(pd.read_csv(submissions[0]).columns) == ["user_id", "items"]
    for argv, message in ((["--method", "stacking"], "mean, weighted_mean or rank_mean"),
                          (["--method", "weighted_mean", "--weights", "optimize"], "explicit weights")):  # fmt: skip
        code, _, err = _run(capsys, "ensemble", "--top", "2", "--dataset", "movielens", *argv)
        assert code == 2 and message in err, err


def test_best_epoch_counts_from_one_like_the_checkpoints(workdir, views_dir):
    from harness.cv import make_run_config, run_cv
    from harness.io import load_checkpoint

    layer = {"folds": 2, "data": {"dir": str(views_dir)}, "train": {"epochs": 3, "progress": False}, "tracking": False}
    result = run_cv(make_run_config("clip_multimodal", layer), log=lambda message: None)
    for row in result["folds"]:
        best = load_checkpoint(Path(result["run_dir"]) / f"fold_{row['fold']}" / "best.pt")
        assert 1 <= row["best_epoch"] == best["epoch"] <= 3


def test_runs_differing_only_in_seed_share_folds_and_blend(capsys, workdir, views_dir):
    """Seed averaging: --fold-seed fixes the split, so runs that differ only in --seed blend; a run on other
    folds is named, with the reason, by ensemble --top."""
    import json

    import mlflow

    def cv(*flags):
        code, out, err = _run(capsys, "--model", "clip_multimodal", "--folds", "2", "--data", str(views_dir),
                              "train.epochs=2", "train.progress=false", *flags)  # fmt: skip
        assert code == 0, err
        name = Path(next(line for line in out.splitlines() if line.startswith("submission: ")).split()[1]).stem
        record = json.loads((workdir / "leaderboard" / "runs" / name / "run.json").read_text())
        scores = json.loads((workdir / "leaderboard" / "runs" / name / "scores.json").read_text())
        return {"name": name, "id": record["run_id"], "oof": scores["oof_msle"], "fold_file": record["fold_file"]}

    a, b = cv("--seed", "1", "--fold-seed", "0"), cv("--seed", "2", "--fold-seed", "0")
    assert a["fold_file"] == b["fold_file"] and a["fold_file"].endswith("__stratified__k2__s0.csv")
    assert [p.name for p in (workdir / "folds").glob("*.csv")] == [a["fold_file"]]
    tags = [mlflow.tracking.MlflowClient().get_run(run["id"]).data.tags for run in (a, b)]
    assert [(t["seed"], t["fold_seed"]) for t in tags] == [("1", "0"), ("2", "0")]
    code, out, err = _run(capsys, "ensemble", "--top", "2", "--dataset", "views", "--method", "mean")
    assert code == 0, err
    assert a["name"] in out and b["name"] in out and "skipped" not in out

    c = cv("--seed", "3")  # its own fold seed: another fold file
    assert c["fold_file"].endswith("__s3.csv")
    code, out, err = _run(capsys, "ensemble", "--top", "3", "--dataset", "views", "--method", "mean")
    reason = "other fold file ({}, not {})"
    if c["oof"] < min(a["oof"], b["oof"]):  # the best run alone on its folds: nothing to blend, both others named
        assert code == 2 and "An ensemble needs at least 2 runs, got 1" in err, err
        for run in (a, b):
            assert f"{run['name']} ({run['id']}): {reason.format(a['fold_file'], c['fold_file'])}" in err
    else:  # a and b blend, c is named
        assert code == 0, err
        assert "skipped 1 run(s)" in out
        assert f"{c['name']} ({c['id']}): {reason.format(c['fold_file'], a['fold_file'])}" in out
    assert "share --fold-seed" in out + err

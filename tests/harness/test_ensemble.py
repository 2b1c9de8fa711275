"""Ensembling: each blending method against a hand computation, the member checks, one real run."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from harness import blending, ensemble
from harness.errors import HarnessError
from harness.metrics import mean_squared_log_error

P = np.array([[1.0, 4.0, 2.0, 8.0], [3.0, 2.0, 6.0, 10.0], [2.0, 9.0, 1.0, 6.0]])


def test_mean_median_weighted_by_hand():
    np.testing.assert_allclose(blending.mean(P), [2.0, 5.0, 3.0, 8.0])
    np.testing.assert_allclose(blending.median(P), [2.0, 4.0, 2.0, 8.0])
    # weights 2:1:1 normalise to 0.5, 0.25, 0.25
    expected = [0.5 * 1 + 0.25 * 3 + 0.25 * 2, 0.5 * 4 + 0.25 * 2 + 0.25 * 9, 0.5 * 2 + 0.25 * 6 + 0.25 * 1, 8.0]
    np.testing.assert_allclose(blending.weighted_mean(P, [2, 1, 1]), expected)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [1, -1, 1], [0, 0, 0], [1, np.nan, 1]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(HarnessError):
        blending.weighted_mean(P, weights)


def test_rank_mean_by_hand():
    # scaled ranks per member (0, 1/3, 2/3, 1 for ranks 1..4):
    #   m0 [1,4,2,8] -> [0, 2/3, 1/3, 1]; m1 [3,2,6,10] -> [1/3, 0, 2/3, 1]; m2 [2,9,1,6] -> [1/3, 1, 0, 2/3]
    # mean ranks [2/9, 5/9, 1/3, 8/9]; mean prediction [2,5,3,8] sorted [2,3,5,8] at [0,1/3,2/3,1]
    # interp: 2/9 -> 2 + (2/9)/(1/3)*(3-2) = 8/3; 5/9 -> 3 + (2/9)/(1/3)*2 = 13/3; 1/3 -> 3; 8/9 -> 5 + (2/9)/(1/3)*3 = 7
    np.testing.assert_allclose(blending.rank_mean(P), [8 / 3, 13 / 3, 3.0, 7.0])
    # members that agree on the order give the mean's values in that order
    agree = np.array([[1.0, 3.0, 2.0], [10.0, 30.0, 20.0]])
    np.testing.assert_allclose(blending.rank_mean(agree), [5.5, 16.5, 11.0])


def _members_and_target(seed, n=60, m=3):
    rng = np.random.default_rng(seed)
    y = np.expm1(rng.normal(8, 1, size=n))
    noise = rng.normal(0, rng.uniform(0.2, 1.5, size=(m, 1)), size=(m, n))
    return np.expm1(np.log1p(y) + noise + rng.normal(0, 0.3, size=(m, 1))), y


def test_stacking_with_ridge_matches_a_manual_per_fold_fit_and_does_not_leak():
    P_oof, y = _members_and_target(0)
    P_test, _ = _members_and_target(1, n=10)
    folds = np.arange(60) % 3
    oof, test, _ = blending.stack(P_oof, y, folds, P_test, "ridge", log_space=True)
    X, t = np.log1p(P_oof.T), np.log1p(y)
    for k in range(3):
        model = Ridge(alpha=1.0).fit(X[folds != k], t[folds != k])
        np.testing.assert_allclose(oof[folds == k], np.clip(np.expm1(model.predict(X[folds == k])), 0, None))
    final = Ridge(alpha=1.0).fit(X, t)
    np.testing.assert_allclose(test, np.clip(np.expm1(final.predict(np.log1p(P_test.T))), 0, None))
    # changing fold 1's own targets changes nothing in fold 1's stacked predictions
    y2 = y.copy()
    y2[folds == 1] *= 7.0
    oof2, _, _ = blending.stack(P_oof, y2, folds, P_test, "ridge", log_space=True)
    np.testing.assert_allclose(oof2[folds == 1], oof[folds == 1])
    assert not np.allclose(oof2[folds != 1], oof[folds != 1])


def test_stacking_with_lightgbm_is_deterministic():
    P_oof, y = _members_and_target(2)
    folds = np.arange(60) % 2
    a = blending.stack(P_oof, y, folds, P_oof[:, :5], "lightgbm", log_space=True)
    b = blending.stack(P_oof, y, folds, P_oof[:, :5], "lightgbm", log_space=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (a[0] >= 0).all() and a[1].shape == (5,)


@pytest.mark.parametrize("seed", range(5))
def test_optimised_weights_never_lose_to_the_best_member(seed):
    P_oof, y = _members_and_target(seed, m=2 + seed % 3)
    w = blending.optimize_weights(P_oof, lambda p: mean_squared_log_error(y, p))
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    best = min(mean_squared_log_error(y, p) for p in P_oof)
    assert mean_squared_log_error(y, blending.weighted_mean(P_oof, w)) <= best + 1e-12


def test_optimised_weights_maximise_when_greater_is_better():
    P_oof, y = _members_and_target(3)
    score = lambda p: -mean_squared_log_error(y, p)  # noqa: E731
    w = blending.optimize_weights(P_oof, score, greater_is_better=True)
    assert score(blending.weighted_mean(P_oof, w)) >= max(score(p) for p in P_oof) - 1e-12


def test_classification_probabilities_blend_row_wise():
    probs = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.5, 0.5], [0.4, 0.6]]])  # [M=2, N=2, C=2]
    oof, test, _ = blending.blend("mean", probs, probs)
    np.testing.assert_allclose(oof, [[0.6, 0.4], [0.3, 0.7]])
    oof, _, _ = blending.blend("rank_mean", probs, probs)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0)


# ----------------------------------------------------------------------------------------------
# Members: checks and one end-to-end run on real CV runs
# ----------------------------------------------------------------------------------------------


def _cv(views_dir, hidden_dim, folds=2):
    from harness.cv import make_run_config, run_cv

    cfg = make_run_config(
        "clip_multimodal", {"train": {"progress": False, "epochs": 2}},
        {"folds": folds, "data": {"dir": str(views_dir)}}, {"model": {"hidden_dim": hidden_dim}},
    )  # fmt: skip
    return run_cv(cfg, log=lambda m: None)


@pytest.fixture
def two_runs(workdir, views_dir):
    return _cv(views_dir, 16), _cv(views_dir, 8)


def test_end_to_end_optimised_blend_of_two_cv_runs(two_runs, workdir):
    import mlflow

    a, b = two_runs
    result = ensemble.run_ensemble([a["run_id"], b["run_id"]], "weighted_mean", weights="optimize", log=lambda m: None)

    submission = pd.read_csv(result["submission"])
    assert result["submission"].startswith("submissions/ensemble-weighted_mean-")
    assert list(submission.columns) == ["id", "views"] and len(submission) == 12
    assert result["oof_msle"] <= min(a["oof_msle"], b["oof_msle"]) + 1e-9
    assert [s["oof_msle"] for s in result["member_scores"]] == pytest.approx([a["oof_msle"], b["oof_msle"]])
    assert sum(result["weights"]) == pytest.approx(1.0)

    run = mlflow.tracking.MlflowClient(result["tracking_uri"]).get_run(result["run_id"])
    assert run.data.tags["kind"] == "ensemble" and run.data.tags["model"] == "ensemble:weighted_mean"
    assert run.data.tags["members"] == f"{a['run_id']},{b['run_id']}"
    assert run.data.tags["fold_file"] == ensemble.load_member(a["run_id"]).fold_file
    assert {"cv_msle_mean", "cv_msle_std", "oof_msle", "fold_0/msle", "fold_1/msle"} <= set(run.data.metrics)
    scores = json.loads((workdir / result["run_dir"] / "scores.json").read_text())
    assert len(scores["member_scores"]) == 2 and scores["weights"] == result["weights"]
    assert not list(workdir.rglob("*.tmp"))

    # the other methods run on the same members; top_runs finds both CV runs, best first
    for method, kwargs in [("mean", {}), ("median", {}), ("rank_mean", {}), ("stacking", {"stacker": "ridge"}),
                           ("stacking", {"stacker": "lightgbm"}), ("weighted_mean", {"weights": [3, 1]})]:  # fmt: skip
        other = ensemble.run_ensemble([a["run_id"], b["run_id"]], method, log=lambda m: None, **kwargs)
        assert np.isfinite(other["oof_msle"]) and pd.read_csv(other["submission"])["views"].ge(0).all()
    with pytest.raises(HarnessError, match="3 weights for 2 runs"):
        ensemble.run_ensemble([a["run_id"], b["run_id"]], "weighted_mean", weights=[1, 1, 1], log=lambda m: None)
    best_first = sorted([a, b], key=lambda r: r["oof_msle"])
    assert ensemble.top_runs("views", 5) == [r["run_id"] for r in best_first]


def test_mismatched_members_are_refused(two_runs):
    a, b = (ensemble.load_member(r["run_id"]) for r in two_runs)
    ensemble.check_members([a, b])
    cases = {
        "fold file": dataclasses.replace(b, fold_file="views-x__kfold__k2__s1.csv"),
        "dataset": dataclasses.replace(b, dataset="other"),
        "metric": dataclasses.replace(b, metric="mse"),
        "OOF ids": dataclasses.replace(b, oof=b.oof.assign(id=b.oof["id"].str.upper())),
        "test ids": dataclasses.replace(b, test=b.test.iloc[1:]),
    }
    for what, bad in cases.items():
        with pytest.raises(HarnessError, match=what) as info:
            ensemble.check_members([a, bad])
        message = str(info.value)
        assert "\n" not in message and a.run_id in message and b.run_id in message
    with pytest.raises(HarnessError, match="at least 2"):
        ensemble.check_members([a])
    with pytest.raises(HarnessError, match="Unknown run id"):
        ensemble.load_member("0" * 32)


def test_classification_runs_of_two_families_share_folds_blend_and_rank(workdir, tmp_path):
    """diff_moe and resnet on one tiny CIFAR-format set: one fold file, probability blends, one leaderboard."""
    from harness.cv import make_run_config, run_cv
    from harness.data.images import generate_cifar10, read_cifar10
    from harness.leaderboard import leaderboard
    from harness.metrics import get_metric
    from harness.tasks.classification import TASK as CLASSIFICATION

    generate_cifar10(tmp_path / "cifar", n_train=120, n_test=20)
    tiny = {"diff_moe": {"embed_dim": 16, "num_heads": 2, "expert_hidden_dim": 32, "text_embed_dim": 8},
            "resnet": {"width": 4}}  # fmt: skip
    runs = [
        run_cv(make_run_config(model, {"train": {"progress": False, "epochs": 1}, "threads_per_fold": 1},
                               {"folds": 2, "data": {"dir": str(tmp_path / "cifar")}, "model": params}),
               log=lambda m: None)
        for model, params in tiny.items()
    ]  # fmt: skip
    assert runs[0]["fold_file"] == runs[1]["fold_file"]
    ids = [run["run_id"] for run in runs]
    members = [ensemble.load_member(run_id) for run_id in ids]
    dataset = read_cifar10(tmp_path / "cifar")
    expected = CLASSIFICATION.score(get_metric("accuracy"), dataset, dataset.train,
                                    (members[0].oof_values() + members[1].oof_values()) / 2)  # fmt: skip

    mean = ensemble.run_ensemble(ids, "mean", log=lambda m: None)
    assert mean["oof_accuracy"] == pytest.approx(expected)
    stacked = ensemble.run_ensemble(ids, "stacking", stacker="ridge", log=lambda m: None)  # logistic on probabilities
    for result in (mean, stacked):
        submission = pd.read_csv(result["submission"])
        assert list(submission.columns) == ["id", "label"] and len(submission) == 20
        assert submission["label"].isin(dataset.meta["classes"]).all()
        assert 0 <= result["oof_accuracy"] <= 1

    board = leaderboard(dataset="cifar10", log=lambda m: None)
    assert set(board["model"]) == {"diff_moe", "resnet", "ensemble:mean", "ensemble:stacking"}
    assert board["fold_file"].unique().to_list() == [Path(runs[0]["fold_file"]).name]


def test_top_runs_keep_the_best_runs_fold_file_and_name_the_runs_passed_over():
    from types import SimpleNamespace

    def run(name, fold_file, data="a" * 16):
        return SimpleNamespace(info=SimpleNamespace(run_name=name, run_id=f"{name}-id"),
                               data=SimpleNamespace(tags={"fold_file": fold_file, "data_fingerprint": data}))  # fmt: skip

    best_first = [run("a", "s42.csv"), run("b", "s7.csv"), run("c", "s42.csv"),
                  run("d", "other-s42.csv", data="b" * 16), run("e", "s42.csv")]  # fmt: skip
    chosen, skipped = ensemble._on_one_fold_file(best_first, 2)
    assert [r.info.run_name for r in chosen] == ["a", "c"]
    assert [(r.info.run_name, why) for r, why in skipped] == [("b", "other fold file (s7.csv, not s42.csv)")]
    chosen, skipped = ensemble._on_one_fold_file(best_first, 5)  # fewer qualify than asked for: every other run named
    assert [r.info.run_name for r in chosen] == ["a", "c", "e"]
    assert [why for _, why in skipped] == ["other fold file (s7.csv, not s42.csv)",
                                           "other data (fingerprint bbbbbbbb, not aaaaaaaa)"]  # fmt: skip

"""The leaderboard on real tracked runs: order by the metric's direction, ranks, columns, outputs."""

import polars as pl
import pytest

from harness.errors import HarnessError
from harness.leaderboard import COLUMNS, leaderboard, plot, render


@pytest.fixture(scope="module")
def store(views_template, tmp_path_factory):
    """Two msle runs differing in ``model.hidden_dim``, one rmsle run and an ensemble, in one store."""
    from harness.cv import make_run_config, run_cv
    from harness.ensemble import run_ensemble
    from harness.tracking import tracking_uri

    work = tmp_path_factory.mktemp("leaderboard")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)

        def cv(hidden_dim, metric="msle"):
            cfg = make_run_config(
                "clip_multimodal", {"train": {"progress": False, "epochs": 2}},
                {"folds": 2, "metric": metric, "data": {"dir": str(views_template)}},
                {"model": {"hidden_dim": hidden_dim}},
            )  # fmt: skip
            return run_cv(cfg, log=lambda m: None)

        runs = [cv(16), cv(8), cv(16, "rmsle")]
        blend = run_ensemble([runs[0]["run_id"], runs[1]["run_id"]], "mean", log=lambda m: None)
        return {"uri": tracking_uri(), "runs": runs, "ensemble": blend}


def test_ranked_best_first_by_metric_direction(store):
    msle = [run for run in store["runs"] if run["metric"] == "msle"]
    frame = leaderboard(dataset="views", metric="msle", tracking_uri=store["uri"])

    assert frame.columns == list(COLUMNS)
    assert frame["rank"].to_list() == [1, 2, 3]
    means = {run["run_id"]: run["cv_msle_mean"] for run in msle}
    means[store["ensemble"]["run_id"]] = store["ensemble"]["cv_msle_mean"]
    assert frame["run_id"].to_list() == sorted(means, key=means.get)  # msle: smaller is better
    assert frame["cv_mean"].to_list() == pytest.approx(sorted(means.values()))
    assert set(frame["kind"]) == {"cv", "ensemble"}
    for run in msle:
        row = frame.filter(pl.col("run_id") == run["run_id"]).row(0, named=True)
        assert row["fold_scores"] == pytest.approx([fold["msle"] for fold in run["folds"]])
        assert row["cv_std"] == pytest.approx(run["cv_msle_std"])
        assert (row["run_name"], row["model"], row["seed"], row["folds"]) == (run["run_name"], "clip_multimodal", 42, 2)
    params = dict(frame.select("run_id", "params").iter_rows())
    assert [params[run["run_id"]] for run in msle] == ["model.hidden_dim=16", "model.hidden_dim=8"]


def test_each_metric_is_ranked_on_its_own(store):
    frame = leaderboard(tracking_uri=store["uri"])

    assert frame.height == 4
    assert frame.filter(pl.col("metric") == "rmsle")["rank"].to_list() == [1]
    assert sorted(frame.filter(pl.col("metric") == "msle")["rank"].to_list()) == [1, 2, 3]


@pytest.mark.parametrize("format", ["table", "csv", "md"])
def test_render_lists_every_run(store, format):
    text = render(leaderboard(tracking_uri=store["uri"]), format)
    for run in [*store["runs"], store["ensemble"]]:
        assert run["run_name"] in text
    if format == "md":
        assert text.splitlines()[0].startswith("| rank | model |")


def test_render_refuses_unknown_format(store):
    with pytest.raises(HarnessError, match="table, csv, md"):
        render(leaderboard(tracking_uri=store["uri"]), "html")


def test_plot_writes_png(store, tmp_path):
    path = plot(leaderboard(tracking_uri=store["uri"]), tmp_path / "plots" / "leaderboard.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_store_and_no_match_are_one_line_errors(store, workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(HarnessError, match=r"No CV runs or ensembles in .*python run.py --model"):
        leaderboard()
    assert not (workdir / "leaderboard").exists()  # looking does not create a store
    with pytest.raises(HarnessError, match="of dataset 'other'"):
        leaderboard(dataset="other", tracking_uri=store["uri"])
    with pytest.raises(HarnessError, match="scored with 'mse'"):
        leaderboard(metric="mse", tracking_uri=store["uri"])

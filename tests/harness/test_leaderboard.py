"""The leaderboard on real tracked runs: order by the metric's direction, ranks, columns, outputs."""

import io
import shutil
import sys

import polars as pl
import pytest

from harness.errors import HarnessError
from harness.leaderboard import COLUMNS, leaderboard, plot, render


@pytest.fixture(scope="module")
def store(views_template, isolated_store):
    """Two msle runs differing in ``model.hidden_dim``, one rmsle run and an ensemble, in one store."""
    from harness.cv import make_run_config, run_cv
    from harness.ensemble import run_ensemble
    from harness.tracking import tracking_uri

    with isolated_store("leaderboard"):

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


@pytest.fixture(scope="module")
def mixed_store(store, tmp_path_factory):
    """A copy of ``store`` plus clones of its worst msle run, each scoring far better than every real run:
    one FINISHED on other data, and one each RUNNING, FAILED and KILLED on the same data."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mixed") / "mlflow.db"
    shutil.copy(store["uri"][len("sqlite:///"):], db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    worst = max((run for run in store["runs"] if run["metric"] == "msle"), key=lambda run: run["cv_msle_mean"])
    source = client.get_run(worst["run_id"])
    tags = {k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.")}

    def clone(name, status, **changed):
        run = client.create_run(source.info.experiment_id, run_name=name, tags={**tags, **changed})
        metrics = [Metric(k, v / 100 if "msle" in k else v, 0, 0) for k, v in source.data.metrics.items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in source.data.params.items()])
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    other = clone("other-data", "FINISHED", data_fingerprint="0123456789abcdef")
    unfinished = [clone(f"half-{status.lower()}", status) for status in ("RUNNING", "FAILED", "KILLED")]
    return {"uri": f"sqlite:///{db}", "other": other, "unfinished": unfinished, "data": tags["data_fingerprint"][:8]}


def test_each_data_fingerprint_is_ranked_on_its_own_board(store, mixed_store):
    before = leaderboard(metric="msle", tracking_uri=store["uri"])
    frame = leaderboard(metric="msle", tracking_uri=mixed_store["uri"], log=lambda m: None)

    assert set(before["data"]) == {mixed_store["data"]}
    other = frame.filter(pl.col("data") == "01234567")
    assert other["run_id"].to_list() == [mixed_store["other"]] and other["rank"].to_list() == [1]
    same = frame.filter(pl.col("data") == mixed_store["data"])
    assert same.select("run_id", "rank").equals(before.select("run_id", "rank"))  # untouched by the better score
    text = render(frame, compact=True)
    assert f"views by msle (lower is better), data {mixed_store['data']}" in text
    assert "views by msle (lower is better), data 01234567" in text


def test_all_data_ranks_across_fingerprints(store, mixed_store):
    frame = leaderboard(metric="msle", tracking_uri=mixed_store["uri"], all_data=True, log=lambda m: None)

    assert frame["rank"].to_list() == [1, 2, 3, 4]
    assert frame["run_id"][0] == mixed_store["other"]
    assert "views by msle (lower is better), all data" in render(frame, compact=True)


def test_only_finished_runs_are_ranked_with_a_note(mixed_store):
    notes = []
    frame = leaderboard(tracking_uri=mixed_store["uri"], log=notes.append)

    assert not set(mixed_store["unfinished"]) & set(frame["run_id"])
    assert not frame["run_name"].str.starts_with("half-").any()
    assert notes == ["left out 3 runs that did not finish (1 FAILED, 1 KILLED, 1 RUNNING): "
                     "only FINISHED runs are ranked"]  # fmt: skip


def test_the_note_goes_to_stderr_so_csv_stays_csv(mixed_store, capsys):
    print(render(leaderboard(tracking_uri=mixed_store["uri"]), "csv"))
    out, err = capsys.readouterr()

    assert err.strip().startswith("left out 3 runs") and "left out" not in out
    assert pl.read_csv(io.StringIO(out)).columns == list(COLUMNS)


def test_no_note_when_every_run_finished(store):
    notes = []
    leaderboard(tracking_uri=store["uri"], log=notes.append)
    assert notes == []


def test_table_is_compact_off_a_terminal(store, monkeypatch):
    frame = leaderboard(tracking_uri=store["uri"])
    full, compact = render(frame, compact=False), render(frame, compact=True)

    assert max(map(len, compact.splitlines())) <= 160 < max(map(len, full.splitlines()))
    assert "fold_file" in full and "fold_file" not in compact
    for run in [*store["runs"], store["ensemble"]]:
        assert run["run_name"] in compact and run["run_id"] in compact
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # piped: not a terminal
    assert render(frame) == compact
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert "fold_file" in render(frame)  # every column (rich also styles it for the terminal)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plot_has_one_panel_per_board(mixed_store, tmp_path, monkeypatch):
    import harness.leaderboard

    figures = []
    monkeypatch.setattr(harness.leaderboard.plt, "close", figures.append)  # keep the figure open to inspect it
    plot(leaderboard(tracking_uri=mixed_store["uri"], log=lambda m: None), tmp_path / "board.png")

    titles = [ax.get_title() for ax in figures[0].axes]
    assert sorted(titles) == sorted([f"views: msle (lower is better), data {mixed_store['data']}",
                                     "views: msle (lower is better), data 01234567",
                                     f"views: rmsle (lower is better), data {mixed_store['data']}"])  # fmt: skip

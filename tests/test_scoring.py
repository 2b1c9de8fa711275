"""Scoring submission files: hand-computed scores for every task type, one-line format errors, the public /
private split, and submissions on the leaderboard."""

import dataclasses
import io
import shutil

import numpy as np
import pandas as pd
import polars as pl
import pytest

import run
from harness.data import load_dataset
from harness.errors import HarnessError
from harness.scoring import public_split, score_submission
from harness.tasks import get_task_adapter


def _run(capsys, *argv):
    code = run.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def _split(dataset):
    """The public mask of ``dataset``'s scored rows, as ``score`` draws it (leaderboard/splits/ of the cwd)."""
    return public_split(dataset, get_task_adapter(dataset.task).submission_keys(dataset))[1]


# ----------------------------------------------------------------------------------------------
# The views competition: a CV run's file, a hand-edited copy, the leaderboard
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def board(views_template, isolated_store):
    """One store: a CV run on the tiny views data with its submission scored, and a hand-edited copy scored."""
    from harness.cv import make_run_config, run_cv

    with isolated_store("scoring") as work:
        layer = {"folds": 2, "data": {"dir": str(views_template)}, "train": {"epochs": 2, "progress": False}}
        cv = run_cv(make_run_config("clip_multimodal", layer), log=lambda m: None)
        cv_lines, edited_lines = [], []
        scored = score_submission(cv["submission"], "views", views_template, private=True, log=cv_lines.append)

        # by hand: the truth everywhere, one public row off by exactly 1 in log1p space
        truth = pd.read_csv(views_template / "test_labels.csv", dtype={"id": str, "views": float})
        split = pd.read_csv(scored["split_file"], dtype=str).set_index("id")["board"]
        edited = truth.copy()
        first_public = split.index[split == "public"][0]
        row = edited["id"] == first_public
        edited.loc[row, "views"] = np.e * (1 + edited.loc[row, "views"]) - 1
        edited.to_csv(work / "by_hand.csv", index=False)
        external = score_submission(work / "by_hand.csv", "views", views_template, log=edited_lines.append)
    return {"work": work, "cv": cv, "scored": scored, "cv_lines": cv_lines, "external": external,
            "edited_lines": edited_lines, "truth": truth.set_index("id")["views"], "split": split,
            "data": views_template}  # fmt: skip


def test_a_cv_runs_submission_scores_as_computed_by_hand(board):
    submission = pd.read_csv(board["work"] / board["cv"]["submission"], dtype={"id": str}).set_index("id")["views"]
    truth, split, scored = board["truth"], board["split"], board["scored"]
    for name in ("public", "private"):
        ids = split.index[split == name]
        expected = np.mean((np.log1p(submission[ids]) - np.log1p(truth[ids])) ** 2)
        assert scored[name] == pytest.approx(expected)
        assert scored[f"n_{name}"] == len(ids)
        assert f"{name:<7} msle {expected:.4f} ({len(ids)} rows)" in board["cv_lines"]
    assert (scored["n_public"], scored["n_private"]) == (4, 8)  # 30 % of 12 test rows
    assert (scored["source"], scored["model"]) == (board["cv"]["run_id"], "clip_multimodal")


def test_a_hand_edited_copy_scores_as_computed_by_hand_and_counts_as_external(board):
    external = board["external"]
    assert external["public"] == pytest.approx(1 / 4)  # one of the 4 public rows has squared log error 1
    assert external["private"] == pytest.approx(0.0, abs=1e-12)
    assert (external["source"], external["model"]) == ("external", "external")
    assert "public  msle 0.2500 (4 rows)" in board["edited_lines"]
    assert not any(line.startswith("private") for line in board["edited_lines"])  # only with private=True


def test_every_scored_file_is_an_mlflow_run_with_its_source_and_the_file(board):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(board["scored"]["tracking_uri"])
    for result, name in ((board["scored"], board["cv"]["run_name"] + ".csv"), (board["external"], "by_hand.csv")):
        run = client.get_run(result["run_id"])
        assert run.data.tags["kind"] == "submission" and run.data.tags["source"] == result["source"]
        assert run.data.tags["split_file"].endswith("__public30.csv")
        assert run.data.metrics["public_msle"] == pytest.approx(result["public"])
        assert [a.path for a in client.list_artifacts(result["run_id"], "submission")] == [f"submission/{name}"]


def test_the_private_score_is_printed_on_request_only(capsys, board, monkeypatch):
    monkeypatch.chdir(board["work"])
    argv = ["score", "by_hand.csv", "--dataset", "views", "--data", str(board["data"])]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert "public  msle 0.2500 (4 rows)" in out and "private" not in out
    code, out, err = _run(capsys, *argv, "--private")
    assert code == 0, err
    assert "private msle 0.0000 (8 rows)" in out


def test_the_leaderboard_shows_cv_public_and_private_side_by_side(capsys, board, monkeypatch):
    monkeypatch.chdir(board["work"])
    code, out, err = _run(capsys, "leaderboard", "--dataset", "views", "--format", "csv")
    assert code == 0, err
    row = pl.read_csv(io.StringIO(out.strip())).row(0, named=True)
    assert row["run_id"] == board["cv"]["run_id"] and row["cv_mean"] == pytest.approx(board["cv"]["cv_msle_mean"])
    assert (row["public"], row["private"]) == pytest.approx((board["scored"]["public"], board["scored"]["private"]))


@pytest.mark.parametrize("ranked_by", ["public", "private"])
def test_an_external_file_ranks_on_the_public_and_private_boards(capsys, board, monkeypatch, ranked_by):
    monkeypatch.chdir(board["work"])
    code, out, err = _run(capsys, "leaderboard", "--dataset", "views", "--board", ranked_by, "--format", "csv")
    assert code == 0, err
    frame = pl.read_csv(io.StringIO(out.strip()))
    assert frame.height == 2  # each file once, however often it was scored
    external, cv = frame.row(0, named=True), frame.row(1, named=True)  # the hand-edited file is far better
    assert (external["rank"], external["model"], external["source"]) == (1, "external", "external")
    assert external["cv_mean"] is None
    assert external[ranked_by] == pytest.approx(board["external"][ranked_by], abs=1e-12)
    assert (cv["rank"], cv["source"], cv["model"]) == (2, board["cv"]["run_id"], "clip_multimodal")
    assert cv["cv_mean"] == pytest.approx(board["cv"]["cv_msle_mean"])
    code, out, _ = _run(capsys, "leaderboard", "--dataset", "views", "--board", ranked_by)
    assert f"views by {ranked_by} msle (lower is better)" in out and "by_hand.csv" in out


# ----------------------------------------------------------------------------------------------
# Format checks: one line naming the row and column, exit 2, nothing written or logged
# ----------------------------------------------------------------------------------------------


def _set(frame, row, column, value):
    """A copy of ``frame`` with cell (``row``, ``column``) set, ``row`` counted from 0 in file order."""
    frame = frame.astype({column: object})
    frame.iat[row, frame.columns.get_loc(column)] = value
    return frame


VIEWS_VIOLATIONS = {  # an edit of the true labels (a valid file), the error's fragment
    "header": (lambda f: f.rename(columns={"views": "view"}), "the header is 'id,view'; expected 'id,views'"),
    "missing row": (lambda f: f.iloc[1:], "column 'id': 1 test ids of views have no row (e.g. 'vid_00049')"),
    "duplicate id": (lambda f: pd.concat([f, f.iloc[[2]]]),
                     "row 13, column 'id': 'vid_00051' is listed twice (first in row 3)"),
    "unknown id": (lambda f: _set(f, 4, "id", "vid_99999"),
                   "row 5, column 'id': 'vid_99999' is not a test id of views"),
    "not a number": (lambda f: _set(f, 1, "views", "many"),
                     "row 2 (id 'vid_00050'), column 'views': 'many' is not a finite number"),
    "empty cell": (lambda f: _set(f, 1, "views", ""), "row 2 (id 'vid_00050'), column 'views': '' is not a finite number"),
    "negative views": (lambda f: _set(f, 1, "views", "-3"), "column 'views': '-3' is out of range; expected views >= 0"),
}  # fmt: skip


@pytest.mark.parametrize("violation", VIEWS_VIOLATIONS)
def test_a_views_format_violation_is_one_line_naming_row_and_column(capsys, workdir, views_dir, violation):
    edit, fragment = VIEWS_VIOLATIONS[violation]
    truth = pd.read_csv(views_dir / "test_labels.csv", dtype=str, keep_default_na=False)
    edit(truth).to_csv(workdir / "sub.csv", index=False)
    line = _one_error(capsys, "score", "sub.csv", "--dataset", "views", "--data", str(views_dir))
    assert line.startswith("error: sub.csv: ") and fragment in line, line
    assert not (workdir / "leaderboard").exists()  # no split drawn, no run logged


def test_labels_come_from_the_data_directory_or_a_labels_file(capsys, workdir, views_dir):
    shutil.copy(views_dir / "test_labels.csv", workdir / "sub.csv")
    (views_dir / "test_labels.csv").rename(workdir / "labels.csv")
    line = _one_error(capsys, "score", "sub.csv", "--dataset", "views", "--data", str(views_dir))
    assert "No held-out labels for views" in line and "--labels FILE" in line
    _set(pd.read_csv(workdir / "labels.csv", dtype=str), 0, "views", "x").to_csv("bad_labels.csv", index=False)
    argv = ["score", "sub.csv", "--dataset", "views", "--data", str(views_dir), "--labels"]
    line = _one_error(capsys, *argv, "bad_labels.csv")
    assert "bad_labels.csv: row 1 (id 'vid_00049'), column 'views'" in line  # checked as a submission is
    code, out, err = _run(capsys, *argv, "labels.csv")
    assert code == 0 and "public  msle 0.0000" in out, err


# ----------------------------------------------------------------------------------------------
# Every task type: a hand-made file scored, its format checked
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    """Tiny embedded-format data of each other task type, by dataset name."""
    from harness.data.flickr8k import generate_flickr8k
    from harness.data.images import generate_cifar10
    from harness.data.movielens import generate_movielens
    from harness.data.reid import generate_reid

    root = tmp_path_factory.mktemp("tasks")
    generate_cifar10(root / "cifar10", n_train=40, n_test=20)
    generate_movielens(root / "movielens", n_users=80, n_items=120, mean_length=25)
    generate_reid(root / "market1501", n_train_ids=8, n_test_ids=6, n_distractors=3, n_junk=1)
    generate_flickr8k(root / "flickr8k", n_images=40)
    return root


def _classes(dataset, public):
    """Public rows: the true class; private rows: the next one."""
    names, label = np.asarray(dataset.meta["classes"]), dataset.test["label"].to_numpy()
    return pd.DataFrame({"id": dataset.test["id"], "label": names[np.where(public, label, (label + 1) % len(names))]})


def _items(dataset, public):
    """Public users: two other items, then the target (NDCG@10 = 1/log2(4) = 0.5); private users: no target."""
    raw = dataset.meta["items"].set_index("item_id")["movie_id"].astype(str)
    users = dataset.meta["users"].set_index("user_id")["raw_user_id"]
    lists = []
    for target, on in zip(dataset.test["target"], public):
        others = [item for item in raw.index if item != target][:2]
        lists.append(" ".join(raw[[*others, target] if on else others]))
    return pd.DataFrame({"user_id": users.reindex(dataset.test["user_id"]).to_numpy(), "items": lists})


def _gallery(dataset, public):
    """Public queries: their matches first (Rank-1 = 1); private ones: another identity first (Rank-1 = 0)."""
    test = dataset.test
    gallery, queries = test[test["is_gallery"]], test[test["is_query"]]
    lists = []
    for (_, query), on in zip(queries.iterrows(), public):
        match = gallery[(gallery["pid"] == query["pid"]) & (gallery["camid"] != query["camid"])]["id"].tolist()
        other = gallery[gallery["pid"] != query["pid"]]["id"].tolist()
        lists.append(" ".join((match + other if on else other[:1] + match)[:100]))
    return pd.DataFrame({"id": queries["id"], "gallery": lists})


def _captions(dataset, public):
    """Public images: their own captions first (Recall@1 = 1); private ones: ten other captions (Recall@10 = 0)."""
    everything = [c for ids in dataset.test["caption_ids"] for c in ids]
    lists = []
    for own, on in zip(dataset.test["caption_ids"], public):
        others = [c for c in everything if c not in own]
        lists.append(" ".join((list(own) + others if on else others)[:10]))
    return pd.DataFrame({"id": dataset.test["id"], "captions": lists})


# dataset: (make a file right on public rows and wrong on private ones, metric, public score, private score)
TASKS = {
    "cifar10": (_classes, "accuracy", 1.0, 0.0),
    "movielens": (_items, "ndcg@10_full", 0.5, 0.0),
    "market1501": (_gallery, "rank1", 1.0, 0.0),
    "flickr8k": (_captions, "i2t_r@10", 1.0, 0.0),
}


@pytest.mark.parametrize("name", TASKS)
def test_every_task_type_scores_a_hand_made_file(board, task_dirs, monkeypatch, name):
    make, metric, public_score, private_score = TASKS[name]
    monkeypatch.chdir(board["work"])
    dataset = load_dataset(name, task_dirs / name)
    make(dataset, _split(dataset)).to_csv(f"{name}.csv", index=False)
    result = score_submission(f"{name}.csv", name, task_dirs / name, metric=metric, log=lambda m: None)
    assert (result["public"], result["private"]) == pytest.approx((public_score, private_score))
    assert result["source"] == "external" and result["n_public"] >= 1 and result["n_private"] >= 1


def test_a_recommendation_file_is_scored_as_its_lists_say(board, task_dirs, monkeypatch):
    """The target in third place: MRR@10 1/3 and Hit@3 1 (a listed target at the end of its list counts)."""
    monkeypatch.chdir(board["work"])
    dataset = load_dataset("movielens", task_dirs / "movielens")
    _items(dataset, np.ones(len(dataset.test), bool)).to_csv("every_user.csv", index=False)
    for metric, expected in (("mrr@10_full", 1 / 3), ("hit@3_full", 1.0), ("hit@2_full", 0.0)):
        result = score_submission("every_user.csv", "movielens", task_dirs / "movielens", metric=metric,
                                  log=lambda m: None)  # fmt: skip
        assert (result["public"], result["private"]) == pytest.approx((expected, expected))


def _first(frame, column):
    return frame[column].iloc[0].split()[0]


# dataset: (edit of a valid file, the error's fragment)
LIST_VIOLATIONS = {
    "unknown class": ("cifar10", lambda f: _set(f, 1, "label", "dgo"),
                      "(id 'test-00001'), column 'label': 'dgo' is not a class of cifar10; expected one of solid_circle"),
    "unknown user": ("movielens", lambda f: _set(f, 1, "user_id", "0"),
                     "row 2, column 'user_id': '0' is not a test user of movielens"),
    "item not in the catalogue": ("movielens", lambda f: _set(f, 1, "items", f"{_first(f, 'items')} 99999"),
                                  "column 'items': '99999' is not an item of the catalogue of movielens"),
    "more than 20 items": ("movielens", lambda f: _set(f, 1, "items", " ".join([_first(f, "items")] * 21)),
                           "column 'items': 21 names; expected at most 20"),
    "an item twice": ("movielens", lambda f: _set(f, 1, "items", " ".join([_first(f, "items")] * 2)),
                      "column 'items': {} is listed twice"),
    "unknown gallery image": ("market1501", lambda f: _set(f, 1, "gallery", "query/nobody.jpg"),
                              "column 'gallery': 'query/nobody.jpg' is not a gallery image of market1501"),
    "more than 100 gallery images": ("market1501",
                                     lambda f: _set(f, 1, "gallery", " ".join([_first(f, "gallery")] * 101)),
                                     "column 'gallery': 101 names; expected at most 100"),
    "unknown caption": ("flickr8k", lambda f: _set(f, 1, "captions", "nothing.jpg#0"),
                        "column 'captions': 'nothing.jpg#0' is not a test caption of flickr8k"),
}  # fmt: skip


def _valid(name, dataset):
    """A file right on every row."""
    return TASKS[name][0](dataset, np.ones(len(get_task_adapter(dataset.task).submission_keys(dataset)), bool))


@pytest.mark.parametrize("violation", LIST_VIOLATIONS)
def test_a_list_or_class_format_violation_is_one_line_naming_row_and_column(capsys, workdir, task_dirs, violation):
    name, edit, fragment = LIST_VIOLATIONS[violation]
    valid = _valid(name, load_dataset(name, task_dirs / name))
    edit(valid).to_csv("sub.csv", index=False)
    line = _one_error(capsys, "score", "sub.csv", "--dataset", name, "--data", str(task_dirs / name),
                      "--metric", TASKS[name][1])  # fmt: skip
    assert line.startswith("error: sub.csv: row 2"), line
    assert fragment.format(repr(_first(valid, valid.columns[1]))) in line, line
    assert not (workdir / "leaderboard").exists()


@pytest.mark.parametrize("name, metric, fragment", [
    ("cifar10", "log_loss", "names one class per row; log_loss needs class probabilities: score it with accuracy"),
    ("movielens", "ndcg@10_sampled", "score it with a _full metric (e.g. ndcg@10_full)"),
    ("market1501", "map_rerank", "not the embeddings that map_rerank re-ranks: score it with map"),
    ("flickr8k", "rsum", "(image to text): it scores i2t_r@1 to i2t_r@10 and i2t_map, not rsum (pass --metric)"),
    ("cifar10", "msle", "Metric 'msle' is for 'regression', not for 'classification'"),
])  # fmt: skip
def test_a_metric_a_submission_cannot_carry_is_refused(capsys, workdir, task_dirs, name, metric, fragment):
    _valid(name, load_dataset(name, task_dirs / name)).to_csv("sub.csv", index=False)
    line = _one_error(capsys, "score", "sub.csv", "--dataset", name, "--data", str(task_dirs / name),
                      "--metric", metric)  # fmt: skip
    assert fragment in line, line


def test_a_labels_file_is_refused_where_the_test_rows_carry_targets(capsys, workdir, task_dirs):
    _valid("movielens", load_dataset("movielens", task_dirs / "movielens")).to_csv("sub.csv", index=False)
    line = _one_error(capsys, "score", "sub.csv", "--dataset", "movielens", "--data", str(task_dirs / "movielens"),
                      "--labels", "labels.csv")  # fmt: skip
    assert "the test rows of movielens carry their own targets ('target')" in line


# ----------------------------------------------------------------------------------------------
# The public / private split
# ----------------------------------------------------------------------------------------------


def test_the_split_is_deterministic_disjoint_and_stored_once(regression_dataset, tmp_path):
    keys = get_task_adapter(regression_dataset.task).submission_keys(regression_dataset)
    path, public = public_split(regression_dataset, keys, splits_dir=tmp_path / "a")
    again = public_split(regression_dataset, keys, splits_dir=tmp_path / "a")[1]
    elsewhere = public_split(regression_dataset, keys, splits_dir=tmp_path / "b")[1]  # drawn afresh, same data
    assert np.array_equal(public, again) and np.array_equal(public, elsewhere)
    assert (public.sum(), (~public).sum()) == (3, 7)  # 30 % of 10 test rows
    stored = pd.read_csv(path, dtype=str)
    assert path.name == f"toy-{regression_dataset.fingerprint[:8]}__public30.csv"
    assert list(stored.columns) == ["id", "board"] and stored["id"].tolist() == keys.tolist()
    assert set(stored.loc[stored["board"] == "public", "id"]).isdisjoint(stored.loc[stored["board"] == "private", "id"])
    assert [p.name for p in (tmp_path / "a").iterdir()] == [path.name]  # no temporary or lock file left

    other = dataclasses.replace(regression_dataset, test=regression_dataset.test.assign(x=0.0))  # new data version
    assert public_split(other, keys, splits_dir=tmp_path / "a")[0] != path

    stored.iloc[:-1].to_csv(path, index=False)
    with pytest.raises(HarnessError, match="delete it to draw the split again"):
        public_split(regression_dataset, keys, splits_dir=tmp_path / "a")


def test_a_recommendation_runs_submission_scores_its_test_ndcg(board, task_dirs, monkeypatch):
    """The run's own test score (its top-50 lists) and its file's (top 20) agree: the boards are a split of it."""
    from harness.cv import make_run_config, run_cv

    monkeypatch.chdir(board["work"])
    layer = {"folds": 2, "data": {"dir": str(task_dirs / "movielens")}, "train": {"progress": False}}
    cv = run_cv(make_run_config("popularity", layer), log=lambda m: None)
    result = score_submission(cv["submission"], "movielens", task_dirs / "movielens", log=lambda m: None)
    n = result["n_public"] + result["n_private"]
    assert (result["public"] * result["n_public"] + result["private"] * result["n_private"]) / n == pytest.approx(
        cv["test_ndcg@10_full"])  # fmt: skip
    assert (result["source"], result["model"]) == (cv["run_id"], "popularity")

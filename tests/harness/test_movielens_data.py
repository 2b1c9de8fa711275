"""The movielens dataset: readers of the three release formats, leave-one-out sequences, side files, generator."""

import csv
import json
import random
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data import get_dataset_spec
from harness.data.movielens import (
    FALLBACK_DESCRIPTION_TEMPLATE,
    GENRES,
    HISTORY_PREFERENCE_TEMPLATE,
    ML100K_GENRES,
    generate_movielens,
    oracle_next_item_scores,
    read_movielens,
)
from harness.errors import HarnessError
from harness.metrics import ndcg_at_k, target_ranks
from harness.tasks import TaskType

# A tiny catalogue and ratings, written in each format below. Movie 60 is never rated.
MOVIES = [
    (10, "Amélie (2001)", "Comedy|Romance"),
    (20, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (30, "Matrix, The (1999)", "Action|Sci-Fi|Thriller"),
    (40, "Heat (1995)", "Action|Crime|Thriller"),
    (50, "Untitled", "Drama"),
    (60, "Unrated (1990)", "Western"),
]
USERS = [(3, "F", 25, 4), (7, "M", 35, 7)]
# (user, movie, rating, timestamp): user 7 in scrambled time order, user 3 with a tie at t=10.
RATINGS = [
    (7, 10, 5, 100), (7, 30, 4, 50), (7, 20, 3, 300), (7, 40, 2, 200),
    (3, 50, 4, 10), (3, 10, 5, 10), (3, 20, 1, 5),
]  # fmt: skip
LOOSE = {"min_user_interactions": 3, "min_item_interactions": 1}
# Internal ids: movies 10..50 -> 1..5, users 3 -> 1, 7 -> 2.
# user 3: 20 (t=5), then 50 and 10 tied at t=10 (file order) -> [2, 5, 1]
# user 7: 30 (t=50), 10, 40, 20 -> [3, 1, 4, 2]
TRAIN_HISTORY, TRAIN_TARGET = [[2], [3, 1]], [5, 4]
TEST_HISTORY, TEST_TARGET = [[2, 5], [3, 1, 4]], [1, 2]
TEXTS = [
    "Likes Animation, Children's, Comedy. Recently watched: Toy Story.",
    "Likes Action, Comedy, Romance. Recently watched: Matrix, The; Amélie.",  # never Heat or Toy Story
]


def _lines(path, lines, encoding="latin-1"):
    path.write_bytes("".join(f"{line}\n" for line in lines).encode(encoding))


def _write_ml1m(root, ratings=RATINGS, movies=MOVIES, users=USERS):
    root.mkdir(parents=True, exist_ok=True)
    _lines(root / "ratings.dat", [f"{u}::{m}::{r}::{t}" for u, m, r, t in ratings])
    _lines(root / "movies.dat", [f"{m}::{title}::{genres}" for m, title, genres in movies])
    _lines(root / "users.dat", [f"{u}::{g}::{a}::{o}::0211{u}" for u, g, a, o in users])
    return root


def _write_ml100k(root, ratings=RATINGS, movies=MOVIES, users=USERS):
    root.mkdir(parents=True, exist_ok=True)
    _lines(root / "u.data", [f"{u}\t{m}\t{r}\t{t}" for u, m, r, t in ratings])
    rows = []
    for m, title, genres in movies:
        flags = "|".join("1" if g in genres.split("|") else "0" for g in ML100K_GENRES)
        rows.append(f"{m}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?{m}|{flags}")
    _lines(root / "u.item", rows)
    _lines(root / "u.user", [f"{u}|{a}|{g}|writer|0211{u}" for u, g, a, _ in users])
    return root


def _write_csv(root, ratings=RATINGS, movies=MOVIES, users=None):
    root.mkdir(parents=True, exist_ok=True)
    _lines(root / "ratings.csv", ["userId,movieId,rating,timestamp", *(f"{u},{m},{r}.0,{t}" for u, m, r, t in ratings)],
           "utf-8")  # fmt: skip
    with open(root / "movies.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([("movieId", "title", "genres"), *movies])
    _lines(root / "links.csv", ["movieId,imdbId,tmdbId", *(f"{m},{m + 100000:07d},{'' if m == 20 else m + 5}"
                                                             for m, _, _ in movies)], "utf-8")  # fmt: skip
    return root


WRITERS = {"ml-1m": _write_ml1m, "ml-100k": _write_ml100k, "csv": _write_csv}


def _lists(column):
    return [list(map(int, h)) for h in column]


# ---- reader: the three formats -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_gives_the_same_leave_one_out_sequences(tmp_path, fmt):
    dataset = read_movielens(WRITERS[fmt](tmp_path / fmt), **LOOSE)
    train, test = dataset.train, dataset.test
    assert dataset.name == "movielens" and dataset.task is TaskType.SEQUENTIAL_RECOMMENDATION
    assert (dataset.id_col, dataset.target_col, dataset.group_col, dataset.media_cols) == (
        "user_id",
        "target",
        None,
        ("poster_path",),
    )
    assert dataset.meta["format"] == fmt and dataset.meta["n_items"] == 6
    for frame in (train, test):
        assert list(frame.columns) == ["user_id", "history", "target", "user_text"]
        assert frame["user_id"].dtype == np.int64 and frame["target"].dtype == np.int64
        assert all(isinstance(h, np.ndarray) and h.dtype == np.int64 for h in frame["history"])
        assert list(frame["user_id"]) == [1, 2] and list(frame["user_text"]) == TEXTS
    assert _lists(train["history"]) == TRAIN_HISTORY and list(train["target"]) == TRAIN_TARGET
    assert _lists(test["history"]) == TEST_HISTORY and list(test["target"]) == TEST_TARGET

    items = dataset.meta["items"]
    assert list(items["item_id"]) == [1, 2, 3, 4, 5] and list(items["movie_id"]) == [10, 20, 30, 40, 50]
    assert list(items["title"]) == ["Amélie", "Toy Story", "Matrix, The", "Heat", "Untitled"]
    assert items["genres"].iloc[1] == "Animation|Children's|Comedy"
    assert items["description"].iloc[1] == "Toy Story. Genres: Animation, Children's, Comedy."
    assert items["poster_path"].isna().all()
    users = dataset.meta["users"]
    assert list(users["raw_user_id"]) == [3, 7] and list(users["preference_source"]) == ["history"] * 2
    stats = dataset.meta["stats"]
    assert (stats["ratings_read"], stats["tied_timestamps"], stats["duplicates"], stats["users"]) == (7, 1, 0, 2)
    expected_genres = ["Action", "Animation", "Children's", "Comedy", "Crime", "Drama", "Romance", "Sci-Fi", "Thriller"]
    assert dataset.meta["genres"] == expected_genres


def test_ml1m_specifics_latin1_years_and_demographics(tmp_path):
    dataset = read_movielens(_write_ml1m(tmp_path), **LOOSE)
    items, users = dataset.meta["items"], dataset.meta["users"]
    assert items["year"].iloc[0] == 2001.0 and np.isnan(items["year"].iloc[4])  # "Untitled" has no year
    assert items["year"].dtype == float
    assert (
        list(users["gender"]) == ["F", "M"] and list(users["age"]) == [25, 35] and list(users["occupation"]) == [4, 7]
    )
    assert "imdb_id" not in items


def test_ml100k_specifics(tmp_path):
    dataset = read_movielens(_write_ml100k(tmp_path), **LOOSE)
    items, users = dataset.meta["items"], dataset.meta["users"]
    assert items["year"].iloc[4] == 1995.0  # no year in the title: the release date's
    assert list(users["gender"]) == ["F", "M"] and list(users["age"]) == [25, 35]
    assert list(users["occupation"]) == ["writer", "writer"]


def test_csv_specifics_quoted_titles_and_links(tmp_path):
    dataset = read_movielens(_write_csv(tmp_path), **LOOSE)
    items = dataset.meta["items"]
    assert items["title"].iloc[2] == "Matrix, The" and items["title"].iloc[0] == "Amélie"
    assert list(items["imdb_id"]) == [100010, 100020, 100030, 100040, 100050]
    assert items["tmdb_id"].isna().tolist() == [False, True, False, False, False] and items["tmdb_id"].iloc[0] == 15
    assert "gender" not in dataset.meta["users"]


def test_fingerprint_follows_the_sequences_not_the_directory_name(tmp_path):
    a = read_movielens(_write_ml1m(tmp_path / "a"), **LOOSE)
    b = read_movielens(_write_ml1m(tmp_path / "b"), **LOOSE)
    assert isinstance(a.fingerprint, str) and a.fingerprint == b.fingerprint
    later = [(u, m, r, 1000 if (u, m) == (3, 20) else t) for u, m, r, t in RATINGS]  # same ratings, other order
    c = read_movielens(_write_ml1m(tmp_path / "c", ratings=later), **LOOSE)
    assert _lists(c.test["history"])[0] == [5, 1] and c.test["target"].iloc[0] == 2
    assert c.fingerprint != a.fingerprint
    # the tie order is part of the fingerprint, even where it changes no sequence
    no_ties = [(u, m, r, t + i) for i, (u, m, r, t) in enumerate(RATINGS)]
    d, e = (read_movielens(_write_ml1m(tmp_path / order, ratings=no_ties), tie_order=order, **LOOSE)
            for order in ("file", "item_id"))  # fmt: skip
    assert _lists(d.test["history"]) == _lists(e.test["history"]) and d.fingerprint != e.fingerprint


def test_equal_timestamps_keep_the_file_order_or_the_movie_id_order(tmp_path):
    # user 3 rated 50 then 10 in the same second: the file order makes 10 the test target
    by_file = read_movielens(_write_ml1m(tmp_path), **LOOSE)
    by_id = read_movielens(tmp_path, tie_order="item_id", **LOOSE)
    assert _lists(by_file.test["history"])[0] == [2, 5] and by_file.test["target"].iloc[0] == 1
    assert _lists(by_id.test["history"])[0] == [2, 1] and by_id.test["target"].iloc[0] == 5
    assert by_file.meta["tie_order"] == "file" and by_id.meta["tie_order"] == "item_id"
    with pytest.raises(HarnessError, match="tie_order must be one of 'file', 'item_id', got 'time'"):
        read_movielens(tmp_path, tie_order="time", **LOOSE)


# ---- reader: ordering, duplicates, filtering -----------------------------------------------------


def test_file_order_matters_only_among_equal_timestamps_and_only_with_tie_order_file(ml_dir):
    before = {order: read_movielens(ml_dir, tie_order=order) for order in ("file", "item_id")}
    lines = (ml_dir / "ratings.dat").read_text(encoding="latin-1").splitlines()
    random.Random(0).shuffle(lines)
    _lines(ml_dir / "ratings.dat", lines)
    after = {order: read_movielens(ml_dir, tie_order=order) for order in ("file", "item_id")}
    assert after["file"].meta["stats"]["tied_timestamps"] > 0  # the generator plants ties
    one, two = before["item_id"], after["item_id"]
    for a, b in ((one.train, two.train), (one.test, two.test)):
        assert _lists(a["history"]) == _lists(b["history"])
        pd.testing.assert_frame_equal(a.drop(columns="history"), b.drop(columns="history"))
    assert one.fingerprint == two.fingerprint
    one, two = before["file"], after["file"]
    assert _lists(one.test["history"]) != _lists(two.test["history"]) and one.fingerprint != two.fingerprint
    for a, b in zip(one.test["history"], two.test["history"]):  # the same items in the same time order
        assert sorted(a.tolist()) == sorted(b.tolist())


def test_leave_one_out_on_generated_data(ml_dir):
    dataset = read_movielens(ml_dir, min_item_interactions=1)
    train, test = dataset.train, dataset.test
    assert list(train["user_id"]) == list(test["user_id"]) == list(range(1, len(train) + 1))
    assert (train["user_text"] == test["user_text"]).all()
    for history, target, test_history in zip(train["history"], train["target"], test["history"]):
        assert list(history) + [target] == list(test_history)
    # test.history + test.target is each user's ratings stably sorted by timestamp (file order among ties)
    raw = pd.read_csv(ml_dir / "ratings.dat", sep="::", engine="python", names=["user", "movie", "rating", "t"])
    movie_of = dict(zip(dataset.meta["items"]["item_id"], dataset.meta["items"]["movie_id"]))
    user_of = dict(zip(dataset.meta["users"]["user_id"], dataset.meta["users"]["raw_user_id"]))
    expected = raw.sort_values(["user", "t"], kind="stable").groupby("user")["movie"].apply(list)
    for user, history, target in zip(test["user_id"], test["history"], test["target"]):
        assert [movie_of[i] for i in [*history, target]] == expected[user_of[user]]


def test_duplicates_keep_the_latest_rating(tmp_path):
    ratings = [*RATINGS, (7, 30, 1, 400)]  # user 7 re-rates movie 30 last
    dataset = read_movielens(_write_ml1m(tmp_path, ratings=ratings), **LOOSE)
    assert dataset.meta["stats"]["duplicates"] == 1 and dataset.meta["stats"]["ratings_read"] == 8
    assert _lists(dataset.test["history"])[1] == [1, 4, 2] and dataset.test["target"].iloc[1] == 3
    # the threshold sees the kept (latest) rating: 1 < 2, so movie 30 is gone for user 7
    with pytest.warns(UserWarning, match="1 of 2 users and 2 of 5 movies are left out"):  # user 3 keeps 2 >= 2
        thresholded = read_movielens(tmp_path, min_rating=2, **LOOSE)
    assert list(thresholded.meta["users"]["raw_user_id"]) == [7]
    assert list(thresholded.meta["items"]["movie_id"]) == [10, 20, 40]
    assert _lists(thresholded.test["history"]) == [[1, 3]] and list(thresholded.test["target"]) == [2]


def test_min_rating_keeps_ratings_at_or_above_it(tmp_path):
    ratings = [*RATINGS, (7, 50, 4, 400), (7, 60, 5, 500)]
    with pytest.warns(UserWarning, match="1 of 2 users .* are left out"):  # user 3 keeps 50 and 10 only
        dataset = read_movielens(_write_ml1m(tmp_path, ratings=ratings), min_rating=4, **LOOSE)
    assert list(dataset.meta["users"]["raw_user_id"]) == [7]
    assert list(dataset.meta["items"]["movie_id"]) == [10, 30, 50, 60]
    assert _lists(dataset.test["history"]) == [[2, 1, 3]] and list(dataset.test["target"]) == [4]
    assert dataset.meta["stats"]["ratings_after_threshold"] == 6


def test_user_with_one_interaction_is_dropped_with_a_warning(tmp_path):
    _write_ml1m(tmp_path, ratings=[*RATINGS, (9, 10, 5, 1)])
    with pytest.warns(UserWarning, match=r"ratings.dat: the k-core filter .* dropped 1 interactions; 1 of 3 users "
                      r"are left out") as record:
        dataset = read_movielens(tmp_path, **LOOSE)
    assert len(record) == 1 and dataset.meta["stats"]["users_filtered"] == 1
    assert list(dataset.meta["users"]["raw_user_id"]) == [3, 7]


def test_k_core_repeats_until_stable(tmp_path):
    # min 3 per user, 2 per item: movie 40 (1 rating) goes -> user 9 has 2 -> goes -> movie 50 has 1 -> goes
    ratings = [(1, 10, 5, 1), (1, 20, 5, 2), (1, 30, 5, 3), (1, 50, 5, 4),
               (2, 10, 5, 1), (2, 20, 5, 2), (2, 30, 5, 3),
               (9, 10, 5, 1), (9, 40, 5, 2), (9, 50, 5, 3)]  # fmt: skip
    _write_ml1m(tmp_path, ratings=ratings, users=[])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = read_movielens(tmp_path, min_user_interactions=3, min_item_interactions=2)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and messages[0] == (
        "ratings.dat: the k-core filter (at least 3 interactions per user and 2 per movie, repeated until stable) "
        "dropped 4 interactions; 1 of 3 users and 2 of 5 movies are left out (in neither train nor test)."
    )
    assert messages[1].startswith("users.dat: 2 of 2 users have no row (e.g. 1, 2)")
    assert list(dataset.meta["items"]["movie_id"]) == [10, 20, 30]
    assert _lists(dataset.test["history"]) == [[1, 2], [1, 2]] and list(dataset.test["target"]) == [3, 3]
    assert (dataset.meta["stats"]["users_filtered"], dataset.meta["stats"]["items_filtered"]) == (1, 2)
    assert dataset.meta["users"]["gender"].isna().all()


def test_bad_thresholds_and_nothing_left(tmp_path):
    _write_ml1m(tmp_path)
    with pytest.raises(HarnessError, match=r"min_user_interactions must be an integer >= 3 \(leave-one-out.*got 2"):
        read_movielens(tmp_path, min_user_interactions=2)
    with pytest.raises(HarnessError, match="min_rating must be a number or None"):
        read_movielens(tmp_path, min_rating="4")
    with pytest.raises(HarnessError) as info:
        read_movielens(tmp_path, min_rating=5, **LOOSE)
    assert re.search(r"ratings.dat: no interactions left after min_rating=5, min_user_interactions=3, "
                     r"min_item_interactions=1 \(7 ratings read\)", str(info.value))  # fmt: skip
    assert "\n" not in str(info.value)


# ---- reader: side files --------------------------------------------------------------------------


def test_descriptions_and_unknown_ids(tmp_path):
    _write_ml1m(tmp_path)
    (tmp_path / "descriptions.json").write_text(json.dumps({"10": "A shy waitress in Montmartre.", "999": "x",
                                                             "abc": "y", "20": ""}))  # fmt: skip
    with pytest.warns(
        UserWarning, match=r"descriptions.json: 2 movie ids are not in the catalogue \(e.g. '999', 'abc'\)"
    ):
        dataset = read_movielens(tmp_path, **LOOSE)
    descriptions = list(dataset.meta["items"]["description"])
    assert descriptions[0] == "A shy waitress in Montmartre."
    assert descriptions[1] == FALLBACK_DESCRIPTION_TEMPLATE.format(
        title="Toy Story", genres="Animation, Children's, Comedy"
    )
    assert descriptions[2] == "Matrix, The. Genres: Action, Sci-Fi, Thriller."
    stats = dataset.meta["stats"]
    assert (stats["descriptions_from_file"], stats["unknown_description_ids"]) == (1, 2)

    (tmp_path / "descriptions.json").unlink()
    pd.DataFrame({"movieId": [30, 70], "description": ["Red pill, blue pill.", "?"]}).to_csv(
        tmp_path / "descriptions.csv", index=False
    )
    with pytest.warns(UserWarning, match=r"descriptions.csv: 1 movie ids are not in the catalogue \(e.g. '70'\)"):
        dataset = read_movielens(tmp_path, **LOOSE)
    assert dataset.meta["items"]["description"].iloc[2] == "Red pill, blue pill."


def test_user_preferences_from_file_and_unknown_users(tmp_path):
    _write_ml1m(tmp_path)
    (tmp_path / "user_preferences.json").write_text(json.dumps({"3": "I like quiet dramas.", "42": "Anything."}))
    with pytest.warns(UserWarning, match=r"user_preferences.json: 1 user ids are not in the users left after "
                                         r"filtering \(e.g. '42'\)"):  # fmt: skip
        dataset = read_movielens(tmp_path, **LOOSE)
    assert list(dataset.meta["users"]["preference_source"]) == ["file", "history"]
    for frame in (dataset.train, dataset.test):
        assert list(frame["user_text"]) == ["I like quiet dramas.", TEXTS[1]]
    assert dataset.meta["stats"]["preferences_from_file"] == 1 and dataset.meta["stats"]["unknown_preference_ids"] == 1


def test_history_preference_text_never_names_the_held_out_items(tmp_path):
    dataset = read_movielens(_write_ml1m(tmp_path), **LOOSE)
    text = dataset.train["user_text"].iloc[1]  # user 7: history Matrix, Amélie; validation Heat; test Toy Story
    assert text == HISTORY_PREFERENCE_TEMPLATE.format(genres="Action, Comedy, Romance", titles="Matrix, The; Amélie")
    for held_out in ("Heat", "Toy Story", "Crime", "Animation"):
        assert held_out not in text
    # the template keeps the last five titles, most recent last, and the three most frequent genres
    long = [(7, m, 4, t) for t, m in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90], 1)]
    movies = [*MOVIES, (70, "Seven (1995)", "Crime"), (80, "Fargo (1996)", "Crime"), (90, "Alien (1979)", "Horror")]
    dataset = read_movielens(_write_ml1m(tmp_path / "long", ratings=long, movies=movies), **LOOSE)
    assert dataset.train["user_text"].iloc[0] == (
        "Likes Action, Comedy, Crime. Recently watched: Matrix, The; Heat; Untitled; Unrated; Seven."
    )


def test_posters_unknown_ids_and_empty_folder(tmp_path):
    _write_ml1m(tmp_path)
    (tmp_path / "posters").mkdir()
    with pytest.warns(UserWarning, match=r"no posters were found for the 5 movies.*image modality will be masked"):
        dataset = read_movielens(tmp_path, **LOOSE)
    assert dataset.meta["items"]["poster_path"].isna().all() and dataset.meta["stats"]["posters_found"] == 0

    for name in ("10.jpg", "20.png", "777.jpg", "notes.txt"):
        Image.new("RGB", (8, 8)).save(tmp_path / "posters" / name) if name[-3:] != "txt" else \
            (tmp_path / "posters" / name).write_text("x")  # fmt: skip
    (tmp_path / "posters" / "30.jpeg").write_bytes(b"not decoded at read time")
    with pytest.warns(UserWarning, match=r"posters: 1 poster files are not in the catalogue \(e.g. '777'\)") as record:
        dataset = read_movielens(tmp_path, **LOOSE)
    assert len(record) == 1
    paths = list(dataset.meta["items"]["poster_path"])
    assert paths[0] == str((tmp_path / "posters" / "10.jpg").absolute()) and paths[1].endswith("20.png")
    assert paths[2].endswith("30.jpeg") and paths[3] is None and paths[4] is None
    assert dataset.meta["stats"]["posters_found"] == 3 and dataset.meta["stats"]["unknown_poster_ids"] == 1


# ---- reader: bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, file, line, pattern",
    [
        ("ml-1m", "ratings.dat", "7::10::4", r"ratings.dat, line 3: expected 4 fields UserID::MovieID::Rating::Timestamp, got 3"),
        ("ml-1m", "ratings.dat", "7::abc::4::100", r"ratings.dat, line 3: MovieID must be an integer, got 'abc'"),
        ("ml-1m", "ratings.dat", "7::10::good::100", r"ratings.dat, line 3: Rating must be a number, got 'good'"),
        ("ml-1m", "movies.dat", "70::No genres", r"movies.dat, line 3: expected 3 fields MovieID::Title::Genres, got 2"),
        ("ml-100k", "u.data", "7\t10\t4", r"u.data, line 3: expected 4 fields"),
        ("csv", "ratings.csv", "7,x1,4.0,100", r"ratings.csv, line 3: movieId must be an integer, got 'x1'"),
        ("csv", "movies.csv", '70,"A, B",Drama,extra', r"movies.csv, line 3: expected 3 fields movieId,title,genres"),
    ],
)  # fmt: skip
def test_malformed_line_is_a_one_line_error_naming_file_and_line(tmp_path, fmt, file, line, pattern):
    WRITERS[fmt](tmp_path)
    lines = (tmp_path / file).read_text(encoding="latin-1" if fmt != "csv" else "utf-8").splitlines()
    lines.insert(2, line)
    _lines(tmp_path / file, lines, "latin-1" if fmt != "csv" else "utf-8")
    with pytest.raises(HarnessError, match=pattern) as info:
        read_movielens(tmp_path, **LOOSE)
    assert "\n" not in str(info.value)


def test_rating_of_an_unknown_movie(tmp_path):
    _write_ml1m(tmp_path, ratings=[*RATINGS, (7, 99, 4, 500)])
    with pytest.raises(HarnessError, match=r"ratings.dat: 1 ratings reference movie ids missing from movies.dat "
                                           r"\(e.g. 99\)"):  # fmt: skip
        read_movielens(tmp_path, **LOOSE)


def test_missing_files(tmp_path):
    with pytest.raises(HarnessError, match=r"no MovieLens ratings file found; expected one of: ratings.dat, "
                                           r"movies.dat, users.dat \(ml-1m\); u.data, u.item, u.user \(ml-100k\)"):  # fmt: skip
        read_movielens(tmp_path)
    _write_ml1m(tmp_path)
    (tmp_path / "movies.dat").unlink()
    with pytest.raises(HarnessError, match=r"found ratings.dat \(ml-1m format\) but not movies.dat"):
        read_movielens(tmp_path)
    _write_csv(tmp_path / "csv")
    _lines(tmp_path / "csv" / "ratings.csv", ["user,movieId,rating,timestamp", "1,10,4.0,5"], "utf-8")
    with pytest.raises(
        HarnessError, match=r"ratings.csv: header must name userId, movieId, rating, timestamp; missing userId"
    ):
        read_movielens(tmp_path / "csv")


def test_reader_is_registered():
    spec = get_dataset_spec("movielens")
    assert spec.reader is read_movielens and spec.generator is generate_movielens
    assert (spec.task, spec.metric, spec.fold_scheme) == (TaskType.SEQUENTIAL_RECOMMENDATION, "ndcg@10_full", "kfold")


# ---- generator -----------------------------------------------------------------------------------

SMALL = {"n_users": 60, "n_items": 120, "mean_length": 30, "image_size": 32}


@pytest.fixture(scope="module")
def ml_template(tmp_path_factory):
    """A small generated dataset; copy it (``ml_dir``) before changing it."""
    root = tmp_path_factory.mktemp("movielens") / "movielens"
    generate_movielens(root, seed=0, **SMALL)
    return root


@pytest.fixture
def ml_dir(ml_template, tmp_path):
    return shutil.copytree(ml_template, tmp_path / "movielens")


def test_generator_is_byte_identical_for_a_seed(tmp_path, ml_template):
    generate_movielens(tmp_path / "b", seed=0, **SMALL)
    generate_movielens(tmp_path / "c", seed=1, **SMALL)
    poster = min((ml_template / "posters").iterdir()).name
    for name in ("ratings.dat", "movies.dat", "users.dat", "descriptions.json", "user_preferences.json",
                 "README.md", "truth/latent.npz", f"posters/{poster}"):  # fmt: skip
        assert (ml_template / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (ml_template / "ratings.dat").read_bytes() != (tmp_path / "c" / "ratings.dat").read_bytes()


def test_generated_data_reads_cleanly_with_the_expected_shape(ml_template):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")  # the default read of the default data reports only the rare movies dropped
        dataset = read_movielens(ml_template)
    stats, items = dataset.meta["stats"], dataset.meta["items"]
    assert dataset.meta["format"] == "ml-1m" and len(dataset.train) == 60 and stats["users_filtered"] == 0
    assert [str(w.message) for w in record] == [
        f"ratings.dat: the k-core filter (at least 5 interactions per user and 5 per movie, repeated until stable) "
        f"dropped {stats['interactions_filtered']} interactions; {stats['items_filtered']} of "
        f"{len(items) + stats['items_filtered']} movies are left out (in neither train nor test)."
    ]
    assert 20 * 60 <= stats["ratings_read"] <= 40 * 60  # lengths clipped to [20, n_items // 3]
    assert 0.05 < stats["tied_timestamps"] / stats["interactions"] < 0.15
    assert 90 <= len(items) <= 120 and dataset.meta["n_items"] == len(items) + 1
    raw_ids = items["movie_id"].to_numpy()
    assert (np.diff(raw_ids) > 1).any() and raw_ids.max() > 120  # gaps: remapping is exercised
    movies = (ml_template / "movies.dat").read_text(encoding="latin-1")
    assert re.search(r"[éñüçè]", movies) and len(re.findall(r"\(\d{4}\)::", movies)) > 90
    assert items["year"].notna().mean() > 0.8 and not items["title"].str.contains(r"\(\d{4}\)$").any()
    assert set(dataset.meta["genres"]) <= set(GENRES)
    poster = items["poster_path"].dropna()
    assert len(poster) >= 0.9 * len(items) and Image.open(poster.iloc[0]).size == (32, 32)
    assert stats["descriptions_from_file"] >= 0.8 * len(items)
    assert 20 <= stats["preferences_from_file"] <= 40  # preference_share=0.5 of 60 users
    assert (dataset.meta["users"]["preference_source"] == "file").sum() == stats["preferences_from_file"]
    assert "probability 0.4 the genre is the previous item's primary genre" in (ml_template / "README.md").read_text()


def test_generated_preference_texts_state_tastes_not_held_out_items(ml_template):
    dataset = read_movielens(ml_template)
    title = dict(zip(dataset.meta["items"]["item_id"], dataset.meta["items"]["title"]))
    from_file = dataset.meta["users"]["preference_source"].to_numpy() == "file"
    for text, validation, test in zip(dataset.train["user_text"][from_file], dataset.train["target"][from_file],
                                      dataset.test["target"][from_file]):  # fmt: skip
        assert re.search(r"Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|Film-Noir|"
                         r"Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western", text)  # fmt: skip
        assert "Recently watched" not in text
        for item in (validation, test):
            assert not re.search(rf"\b{re.escape(title[item])}\b", text)


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(HarnessError, match=r"preference_share must be a number in \[0, 1\], got 2"):
        generate_movielens(tmp_path, preference_share=2)
    with pytest.raises(HarnessError, match="n_items must be an integer >= 60, got 10"):
        generate_movielens(tmp_path, n_items=10)


def test_oracle_beats_popularity_so_the_signal_is_learnable(tmp_path):
    generate_movielens(tmp_path, seed=0, n_users=100, n_items=120, mean_length=30, image_size=16)
    dataset = read_movielens(tmp_path)
    scores = oracle_next_item_scores(tmp_path, dataset)
    n_items, histories = dataset.meta["n_items"], list(dataset.test["history"])
    targets = np.array(dataset.test["target"])
    assert scores.shape == (len(dataset.test), n_items) and (scores[:, 0] == 0).all()
    assert all((scores[row, history] == 0).all() for row, history in enumerate(histories))
    assert (scores[np.arange(len(targets)), targets] > 0).all()
    assert np.allclose(scores.sum(axis=1), 1, atol=0.2) and (scores.sum(axis=1) <= 1 + 1e-9).all()

    # most popular over train histories + validation targets (ties to the lower id)
    counts = np.bincount(np.concatenate([*dataset.train["history"], dataset.train["target"]]), minlength=n_items)
    popularity = np.tile(counts - np.arange(n_items) / n_items, (len(targets), 1))
    oracle = ndcg_at_k(target_ranks(scores, targets, history_mask=histories), 10)
    baseline = ndcg_at_k(target_ranks(popularity, targets, history_mask=histories), 10)
    assert oracle > 1.5 * baseline and oracle > baseline + 0.08, (oracle, baseline)


def test_sampled_protocol_options_reach_the_dataset(ml_template):
    dataset = read_movielens(ml_template, sampled_negatives=20, negative_sampling="popularity")
    assert (dataset.meta["sampled_negatives"], dataset.meta["negative_sampling"]) == (20, "popularity")
    assert read_movielens(ml_template).meta["sampled_negatives"] == 100
    with pytest.raises(HarnessError, match="sampled_negatives must be an integer >= 1, got 0"):
        read_movielens(ml_template, sampled_negatives=0)
    with pytest.raises(HarnessError, match="negative_sampling must be 'uniform' or 'popularity', got 'hard'"):
        read_movielens(ml_template, negative_sampling="hard")

"""The amazon and mql4grec datasets: 2014 / 2018 review readers, MQL4GRec layout read and write, generator."""

import gzip
import json
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from harness.data import get_dataset_spec, load_dataset
from harness.data.amazon import generate_amazon, read_amazon, read_mql4grec, write_mql4grec
from harness.errors import HarnessError
from harness.tasks import TaskType

# (reviewerID, asin, overall, unixReviewTime) in file order. Users U1 < U2 -> 1, 2; items A1..D4 -> 1..4.
# U1 reviews B2 twice (the later, t=20, counts) and D4, A1 on the same day (file order: D4 first).
# U2 in scrambled time order: C3 (50), B2 (100), D4 (200), A1 (300). U3 has one review -> k-core drops U3 and E5.
REVIEWS = [
    ("U2", "B2", 4.0, 100), ("U1", "D4", 5.0, 10), ("U2", "A1", 5.0, 300), ("U1", "A1", 3.0, 10),
    ("U1", "B2", 5.0, 5), ("U2", "D4", 2.0, 200), ("U3", "E5", 5.0, 1), ("U2", "C3", 4.0, 50),
    ("U1", "B2", 2.0, 20),
]  # fmt: skip
LOOSE = {"min_user_interactions": 3, "min_item_interactions": 1}
TRAIN_HISTORY, TRAIN_TARGET = [[4], [3, 2]], [1, 4]
TEST_HISTORY, TEST_TARGET = [[4, 1], [3, 2, 4]], [2, 1]
FILTER_WARNING = (
    "{file}: merged 1 repeated (user, item) reviews into their latest; the k-core filter (at least 3 interactions "
    "per user and 1 per item, repeated until stable) dropped 1 interactions; 1 of 3 users and 1 of 5 items are left "
    "out (in neither train nor test)."
)
GAP_WARNING = (
    "Beauty: of the 4 items, 1 have no line in meta_Beauty.json.gz and 1 have a meta line without a title (titled "
    "'Item {asin}'); 2 have no image (images/<asin>.jpg; their image is masked)."
)
# 2014 meta: Python literals (single quotes, True); B2 has no title, D4 no line, E5's broken line is never parsed.
META_2014 = [
    ("{'asin': 'A1', 'title': 'Rose &amp; Oud <b>Perfume</b>', 'description': \"It's floral.\", 'available': True, "
     "'imUrl': 'http://x/A1.jpg', 'categories': [['Beauty', 'Fragrance', \"Women's\"], ['Beauty', 'Gift Sets']]}"),
    "{'asin': 'E5', 'title': 'broken",
    "{'asin': 'B2', 'description': 'No   title\\nhere.', 'categories': [['Beauty', 'Skin Care']]}",
    ("{'asin': 'C3', 'title': 'Face Cream', 'price': 3.5, 'salesRank': {'Beauty': 5}, "
     "'related': {'also_bought': ['A1']}, 'categories': [['Beauty', 'Skin Care', 'Face']]}"),
]
# 2018 meta: JSON (true, null), description lists, image URL lists, one flat category path with HTML debris.
META_2018 = [
    {"asin": "A1", "title": "Rose Perfume", "description": ["Floral.", "Lasts long."], "imageURL": ["http://s/A1.jpg"],
     "imageURLHighRes": ["http://big/A1.jpg"], "category": ["All Beauty", "Fragrance", "</span></span>"]},
    {"asin": "A1", "title": "A duplicate line"},
    {"asin": "B2", "title": "", "description": "x", "category": []},
    {"asin": "C3", "title": "Face Cream", "description": [], "imageURL": [], "category": ["All Beauty"]},
    {"asin": "D4", "title": "Brush", "brand": None, "fit": True, "category": ["All Beauty", "Tools"]},
]  # fmt: skip


def _gzip(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(f"{line}\n" for line in lines).encode("utf-8")))
    return path


def _review_lines(reviews=REVIEWS):
    return [json.dumps({"reviewerID": u, "asin": a, "reviewerName": "x", "overall": r, "unixReviewTime": t,
                        "summary": "ok", "verified": True}) for u, a, r, t in reviews]  # fmt: skip


def _write_2014(root, reviews=REVIEWS, meta=META_2014, category="Beauty"):
    _gzip(root / f"reviews_{category}_5.json.gz", _review_lines(reviews))
    _gzip(root / f"meta_{category}.json.gz", meta)
    (root / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "images" / "A1.jpg")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(root / "images" / "C3.png")
    Image.new("RGB", (8, 8)).save(root / "images" / "ZZ.jpg")  # an image of no reviewed item
    return root


def _write_2018(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "All_Beauty_5.json").write_text("".join(f"{line}\n" for line in _review_lines()), encoding="utf-8")
    _gzip(root / "meta_All_Beauty.json.gz", [json.dumps(m) for m in META_2018])
    return root


def _read(root, **options):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = read_amazon(root, **{**LOOSE, **options})
    return dataset, [str(w.message) for w in record]


def _lists(column):
    return [list(map(int, h)) for h in column]


# ---- Amazon: the two releases ------------------------------------------------------------------


def test_2014_release_gives_leave_one_out_sequences_and_the_catalogue(tmp_path):
    dataset, messages = _read(_write_2014(tmp_path))
    assert dataset.name == "amazon" and dataset.task is TaskType.SEQUENTIAL_RECOMMENDATION
    assert (dataset.id_col, dataset.target_col, dataset.media_cols) == ("user_id", "target", ("poster_path",))
    assert messages == [FILTER_WARNING.format(file="reviews_Beauty_5.json.gz"), GAP_WARNING]
    for frame in (dataset.train, dataset.test):
        assert list(frame.columns) == ["user_id", "history", "target", "user_text"]
        assert list(frame["user_id"]) == [1, 2] and frame["target"].dtype == np.int64
        assert all(isinstance(h, np.ndarray) and h.dtype == np.int64 for h in frame["history"])
    assert _lists(dataset.train["history"]) == TRAIN_HISTORY and list(dataset.train["target"]) == TRAIN_TARGET
    assert _lists(dataset.test["history"]) == TEST_HISTORY and list(dataset.test["target"]) == TEST_TARGET
    # texts from the training history only (U1: D4; U2: C3, B2), never the validation or test item
    assert list(dataset.train["user_text"]) == [
        "Shops for any category. Recently reviewed: Item D4.",
        "Shops for Skin Care. Recently reviewed: Face Cream; Item B2.",
    ]
    meta = dataset.meta
    assert (meta["format"], meta["category"], meta["n_items"]) == ("amazon-2014", "Beauty", 5)
    assert list(meta["users"]["raw_user_id"]) == ["U1", "U2"]
    items = meta["items"]
    assert list(items.columns) == ["item_id", "raw_item_id", "title", "description", "raw_description", "categories",
                                   "genres", "image_url", "poster_path"]  # fmt: skip
    assert list(items["raw_item_id"]) == ["A1", "B2", "C3", "D4"]
    assert list(items["title"]) == ["Rose & Oud Perfume", "Item B2", "Face Cream", "Item D4"]
    assert list(items["description"]) == [
        "Rose & Oud Perfume. It's floral.",
        "Item B2. No title here.",
        "Face Cream. Category: Beauty > Skin Care > Face.",
        "Item D4.",
    ]
    assert list(items["raw_description"]) == ["It's floral.", "No title here.", "", ""]
    assert list(items["genres"]) == ["Fragrance|Gift Sets", "Skin Care", "Skin Care", ""]
    assert meta["genres"] == ["Fragrance", "Gift Sets", "Skin Care"]
    assert list(items["image_url"]) == ["http://x/A1.jpg", "", "", ""]
    posters = list(items["poster_path"])
    assert posters[0] == str((tmp_path / "images" / "A1.jpg").absolute()) and posters[2].endswith("C3.png")
    assert posters[1] is None and posters[3] is None
    stats = meta["stats"]
    assert (stats["ratings_read"], stats["duplicates"], stats["users"], stats["items"], stats["interactions"]) == (
        9, 1, 2, 4, 7)  # fmt: skip
    gaps = ("items_without_meta", "items_without_title", "items_without_description", "images_found",
            "items_without_image", "unknown_image_ids")
    assert [stats[key] for key in gaps] == [1, 1, 2, 2, 2, 1]
    assert (stats["tied_timestamps"], meta["tie_order"], meta["sampled_negatives"]) == (1, "file", 100)


def test_2018_release_reads_json_meta_lists_and_plain_json_reviews(tmp_path):
    dataset, messages = _read(_write_2018(tmp_path))
    assert messages[0] == FILTER_WARNING.format(file="All_Beauty_5.json")
    assert messages[1] == (
        "All_Beauty: of the 4 items, 1 have a meta line without a title (titled 'Item {asin}'); "
        "4 have no image (images/<asin>.jpg, no images/ folder; their image is masked)."
    )
    assert dataset.meta["format"] == "amazon-2018" and dataset.meta["category"] == "All_Beauty"
    assert _lists(dataset.test["history"]) == TEST_HISTORY and list(dataset.test["target"]) == TEST_TARGET
    items = dataset.meta["items"]
    assert list(items["title"]) == ["Rose Perfume", "Item B2", "Face Cream", "Brush"]  # the first A1 line wins
    assert list(items["description"]) == [
        "Rose Perfume. Floral. Lasts long.",
        "Item B2. x",
        "Face Cream. Category: All Beauty.",
        "Brush. Category: All Beauty > Tools.",
    ]
    assert list(items["genres"]) == ["Fragrance", "", "All Beauty", "Tools"]
    assert list(items["image_url"]) == ["http://big/A1.jpg", "", "", ""]
    assert dataset.meta["stats"]["meta_duplicates"] == 1 and items["poster_path"].isna().all()


def test_2018_gzip_is_recognised_by_content_not_name(tmp_path):
    _write_2018(tmp_path)
    (tmp_path / "All_Beauty_5.json").write_bytes(gzip.compress((tmp_path / "All_Beauty_5.json").read_bytes()))
    dataset, _ = _read(tmp_path)
    assert _lists(dataset.test["history"]) == TEST_HISTORY


def test_tie_order_item_id_orders_same_day_reviews_by_asin_and_changes_the_fingerprint(tmp_path):
    by_file, _ = _read(_write_2014(tmp_path))
    by_asin, _ = _read(tmp_path, tie_order="item_id")
    assert _lists(by_asin.test["history"]) == [[1, 4], [3, 2, 4]] and list(by_asin.test["target"]) == [2, 1]
    assert _lists(by_asin.train["history"]) == [[1], [3, 2]] and list(by_asin.train["target"]) == [4, 4]
    assert by_file.fingerprint != by_asin.fingerprint and by_asin.options["tie_order"] == "item_id"
    assert by_file.fingerprint == _read(tmp_path)[0].fingerprint


def test_default_5_core_and_min_rating(tmp_path):
    _write_2014(tmp_path)
    with pytest.raises(HarnessError, match=r"reviews_Beauty_5.json.gz: no interactions left after min_rating=None, "
                       r"min_user_interactions=5, min_item_interactions=5 \(9 reviews read\)"):  # fmt: skip
        read_amazon(tmp_path)
    dataset, messages = _read(tmp_path, min_rating=4)  # U1 keeps D4 only (A1 rated 3, B2's latest rated 2)
    assert _lists(dataset.test["history"]) == [[3, 2]] and list(dataset.test["target"]) == [1]
    assert list(dataset.meta["items"]["raw_item_id"]) == ["A1", "B2", "C3"]
    assert "dropped 3 reviews below min_rating=4" in messages[0]


def test_category_option_chooses_among_several(tmp_path):
    _write_2014(tmp_path)
    _write_2014(tmp_path, reviews=[(u, a, r, t) for u, a, r, t in REVIEWS if u != "U1"], category="Toys")
    with pytest.raises(HarnessError, match=r"2 reviews files \(Beauty \(reviews_Beauty_5.json.gz\), Toys "
                                           r"\(reviews_Toys_5.json.gz\)\); choose one with category=<Category>\."):
        read_amazon(tmp_path, **LOOSE)
    toys, _ = _read(tmp_path, category="Toys")
    assert toys.meta["category"] == "Toys" and list(toys.meta["users"]["raw_user_id"]) == ["U2"]
    assert toys.options["category"] == "Toys"
    with pytest.raises(HarnessError, match=r"no reviews file for category='Games'; found Beauty"):
        read_amazon(tmp_path, category="Games")


def test_missing_meta_file_titles_every_item_by_fallback(tmp_path):
    _write_2014(tmp_path)
    (tmp_path / "meta_Beauty.json.gz").unlink()
    dataset, messages = _read(tmp_path)
    assert list(dataset.meta["items"]["title"]) == ["Item A1", "Item B2", "Item C3", "Item D4"]
    assert messages[1].startswith("Beauty: of the 4 items, 4 have no line in meta_Beauty.json.gz (file not found)")


# ---- Amazon: bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("file, lines, pattern", [
    ("reviews", [*_review_lines()[:1], "{not json"],
     (r"reviews_Beauty_5.json.gz, line 2: expected a JSON object with reviewerID, asin, overall, unixReviewTime, "
      r"got '\{not json'")),
    ("reviews", ['{"reviewerID": "U1", "asin": "A1", "overall": 5}'],
     (r"reviews_Beauty_5.json.gz, line 1: missing field\(s\) unixReviewTime; every review needs reviewerID, asin, "
      r"overall, unixReviewTime\.")),
    ("reviews", ['{"reviewerID": "U1", "asin": "A1", "overall": "five", "unixReviewTime": 1}'],
     r"line 1: overall must be a number, got 'five'"),
    ("reviews", ['{"reviewerID": "U1", "asin": 7, "overall": 5, "unixReviewTime": 1}'],
     r"line 1: asin must be a non-empty string, got 7"),
    ("reviews", ['["U1", "A1"]'], r"line 1: expected a JSON object, got list"),
    ("reviews", ["", "  "], r"reviews_Beauty_5.json.gz: no reviews; expected one JSON object per line"),
    ("meta", [META_2014[0], "{'asin': 'C3', 'title': 'Face Cream'", META_2014[2]],
     (r"meta_Beauty.json.gz, line 2: expected a Python dict literal \(2014 meta format\) with 'asin', "
      r"got \"\{'asin': 'C3', 'title': 'Face Cream'\"")),
    ("meta", ['{"asin": "C3", "title": "Face Cream", "available": true}'],
     r"meta_Beauty.json.gz, line 1: expected a Python dict literal \(2014 meta format\)"),
    ("meta", ["['C3', 'Face Cream']"], r"line 1: expected a Python dict literal \(2014 meta format\) with a string"),
])  # fmt: skip
def test_bad_lines_are_one_line_errors_naming_file_and_line(tmp_path, file, lines, pattern):
    _write_2014(tmp_path)
    _gzip(tmp_path / ("reviews_Beauty_5.json.gz" if file == "reviews" else "meta_Beauty.json.gz"), lines)
    with pytest.raises(HarnessError, match=pattern) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the filters dropped, reported before the meta file is read
        read_amazon(tmp_path, **LOOSE)
    assert "\n" not in str(info.value)


def test_2018_meta_must_be_json(tmp_path):
    _write_2018(tmp_path)
    _gzip(tmp_path / "meta_All_Beauty.json.gz", [json.dumps(META_2018[0]), META_2014[3]])
    with pytest.raises(HarnessError, match=r"meta_All_Beauty.json.gz, line 2: expected a JSON object \(2018 meta "
                                           r"format\) with 'asin'"), warnings.catch_warnings():  # fmt: skip
        warnings.simplefilter("ignore")
        read_amazon(tmp_path, **LOOSE)


def test_missing_folder_no_reviews_file_and_broken_gzip(tmp_path):
    with pytest.raises(HarnessError, match=r"Data directory '.*nowhere' does not exist"):
        read_amazon(tmp_path / "nowhere")
    (tmp_path / "meta_Beauty.json.gz").write_bytes(b"")
    with pytest.raises(HarnessError) as info:
        read_amazon(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no Amazon reviews file found; expected reviews_<Category>_5.json.gz (2014 release) or "
        "<Category>_5.json.gz / <Category>_5.json (2018 release)."
    )
    (tmp_path / "reviews_Beauty_5.json.gz").write_bytes(b"\x1f\x8b" + b"not deflate data" * 4)
    with pytest.raises(HarnessError, match=r"reviews_Beauty_5.json.gz, line 1: not readable as gzip-compressed "
                                           r"UTF-8 text"):  # fmt: skip
        read_amazon(tmp_path)


def test_reader_options_are_checked(tmp_path):
    _write_2014(tmp_path)
    with pytest.raises(HarnessError, match=r"min_user_interactions must be an integer >= 3 \(leave-one-out"):
        read_amazon(tmp_path, min_user_interactions=2)
    with pytest.raises(HarnessError, match="tie_order must be one of 'file', 'item_id', got 'time'"):
        read_amazon(tmp_path, tie_order="time")
    with pytest.raises(HarnessError, match="negative_sampling must be 'uniform' or 'popularity', got 'hard'"):
        read_amazon(tmp_path, negative_sampling="hard")


# ---- MQL4GRec layout -------------------------------------------------------------------------------

# User 2 lists item 3 twice ([3, 3, 1] -> [3, 1], too short: dropped). Item 4 is in item.json only.
INTER = {"0": [2, 0, 1], "1": [1, 2, 3, 0], "2": [3, 3, 1]}
ITEMS = {
    "0": {"title": "Guitar", "description": "Six strings.", "brand": "X", "categories": "Musical Instruments,Guitars"},
    "1": {"title": "Drum", "description": ""},
    "2": {"title": "Capo &amp; Pick"},
    "3": {"title": "Tuner", "description": "Clip-on.", "categories": "Musical Instruments,Accessories,Tuners"},
    "4": {"title": "Never played"},
}


def _write_layout(folder, name="Instruments", inter=INTER, items=ITEMS, rows=5):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter.json").write_text(json.dumps(inter))
    (folder / f"{name}.item.json").write_text(json.dumps(items))
    if rows:
        np.save(folder / f"{name}.emb-llama-td.npy", np.zeros((rows, 4), np.float32))
    for kind in ("lemb", "vitemb"):
        (folder / f"{name}.index_{kind}.json").write_text(json.dumps({k: ["<a_1>", f"<b_{k}>"] for k in items}))
    return folder


def _read_layout(root, **options):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = read_mql4grec(root, **options)
    return dataset, [str(w.message) for w in record]


def test_mql4grec_layout_reads_as_leave_one_out_with_index_plus_one_ids(tmp_path):
    folder = _write_layout(tmp_path / "Instruments")
    dataset, messages = _read_layout(tmp_path)  # the parent folder: <D>/<D>.inter.json is found
    assert messages == [(
        "Instruments.inter.json: merged 1 repeated (user, item) interactions into their latest; the k-core filter "
        "(at least 3 interactions per user and 1 per item, repeated until stable) dropped 2 interactions; 1 of 3 "
        "users are left out (in neither train nor test)."
    )]
    assert dataset.name == "mql4grec" and dataset.meta["format"] == "mql4grec" and dataset.root == folder
    assert _lists(dataset.train["history"]) == [[3], [2, 3]] and list(dataset.train["target"]) == [1, 4]
    assert _lists(dataset.test["history"]) == [[3, 1], [2, 3, 4]] and list(dataset.test["target"]) == [2, 1]
    assert list(dataset.meta["users"]["raw_user_id"]) == [0, 1]
    items = dataset.meta["items"]
    assert list(items["raw_item_id"]) == [0, 1, 2, 3] and dataset.meta["n_items"] == 5
    assert list(items["title"]) == ["Guitar", "Drum", "Capo & Pick", "Tuner"]
    assert list(items["description"]) == ["Guitar. Six strings.", "Drum.", "Capo & Pick.", "Tuner. Clip-on."]
    assert list(items["genres"]) == ["Guitars", "", "", "Accessories"]
    assert items["categories"][3] == "Musical Instruments > Accessories > Tuners"
    assert dataset.meta["embeddings"] == {"llama-td": folder / "Instruments.emb-llama-td.npy"}
    assert dataset.meta["index_files"] == {"lemb": folder / "Instruments.index_lemb.json",
                                           "vitemb": folder / "Instruments.index_vitemb.json"}  # fmt: skip
    assert dataset.meta["dataset"] == "Instruments" and dataset.meta["stats"]["items_in_item_file"] == 5
    assert _read_layout(folder, dataset="Instruments")[0].fingerprint == dataset.fingerprint


def test_embedding_rows_must_match_the_item_indices(tmp_path):
    _write_layout(tmp_path, rows=4)
    with pytest.raises(HarnessError) as info:
        _read_layout(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'Instruments.emb-llama-td.npy'}: 4 embedding rows, expected 5 (one per item index 0..4)."
    )


def test_items_missing_from_the_item_file_get_a_fallback_title(tmp_path):
    _write_layout(tmp_path, items={k: v for k, v in ITEMS.items() if k != "2"}, rows=0)
    dataset, messages = _read_layout(tmp_path)
    assert messages[1] == "Instruments.item.json: 1 of 4 items have no entry (e.g. 2); they are titled 'Item <index>'."
    assert dataset.meta["items"]["title"][2] == "Item 2" and dataset.meta["embeddings"] == {}


@pytest.mark.parametrize("inter, pattern", [
    ('{"0": [1, 2', r"Instruments.inter.json: not valid JSON \(Expecting"),
    ('[[0, 1, 2]]', r"inter.json: expected a JSON object \{\"<user index>\": \[item index, \.\.\.\]\}, got list"),
    ('{"u0": [0, 1, 2]}', r"keys must be user indices \(integers >= 0\), got 'u0'"),
    ('{"0": "0 1 2"}', r"user 0 must map to a list, got str"),
    ('{"0": [0, -1, 2]}', r"user 0 must map to a list of item indices \(integers >= 0\), got \[0, -1, 2\]"),
])  # fmt: skip
def test_bad_mql4grec_files_are_one_line_errors(tmp_path, inter, pattern):
    _write_layout(tmp_path, rows=0)
    (tmp_path / "Instruments.inter.json").write_text(inter)
    with pytest.raises(HarnessError, match=pattern):
        read_mql4grec(tmp_path)


def test_mql4grec_layout_discovery_errors(tmp_path):
    with pytest.raises(HarnessError, match=r"no MQL4GRec <D>.inter.json found \(looked for .*/\*.inter.json and "
                                           r".*/<D>/<D>.inter.json\)"):  # fmt: skip
        read_mql4grec(tmp_path)
    _write_layout(tmp_path / "Arts", name="Arts", rows=0)
    _write_layout(tmp_path / "Games", name="Games", rows=0)
    with pytest.raises(HarnessError, match=r"several datasets \(Arts, Games\); choose one with dataset=<D>"):
        read_mql4grec(tmp_path)
    assert _read_layout(tmp_path, dataset="Games")[0].meta["dataset"] == "Games"
    (tmp_path / "Games" / "Games.item.json").unlink()
    with pytest.raises(HarnessError, match=r"found Games.inter.json but not Games.item.json"):
        read_mql4grec(tmp_path, "Games")
    with pytest.raises(HarnessError, match=r"no Toys.inter.json here or in Toys/"):
        read_mql4grec(tmp_path, "Toys")


def test_write_then_read_mql4grec_round_trips(tmp_path):
    _write_layout(tmp_path / "in", rows=0)
    original, _ = _read_layout(tmp_path / "in")
    inter_path, item_path = write_mql4grec(original, tmp_path / "out", "Instruments")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Instruments.inter.json", "Instruments.item.json"]
    assert json.loads(inter_path.read_text()) == {"0": [2, 0, 1], "1": [1, 2, 3, 0]}
    tuner = {"title": "Tuner", "description": "Clip-on.", "categories": "Musical Instruments,Accessories,Tuners"}
    assert json.loads(item_path.read_text())["3"] == tuner
    again = read_mql4grec(tmp_path / "out")
    assert again.train.equals(original.train) and again.test.equals(original.test)
    assert again.meta["items"].equals(original.meta["items"]) and again.fingerprint == original.fingerprint


def test_amazon_written_as_mql4grec_keeps_sequences_and_texts(tmp_path):
    amazon, _ = _read(_write_2014(tmp_path / "amazon"))
    write_mql4grec(amazon, tmp_path / "layout", "Beauty")
    layout = read_mql4grec(tmp_path / "layout")
    assert layout.train.equals(amazon.train) and layout.test.equals(amazon.test)
    for column in ("title", "description", "raw_description", "categories"):
        assert list(layout.meta["items"][column]) == list(amazon.meta["items"][column]), column
    assert list(layout.meta["items"]["raw_item_id"]) == [0, 1, 2, 3]
    assert list(layout.meta["items"]["genres"]) == ["Fragrance", "Skin Care", "Skin Care", ""]  # one path is written


def test_write_mql4grec_rejects_what_it_cannot_write(tmp_path, regression_dataset):
    with pytest.raises(HarnessError, match=r"write_mql4grec needs a sequential-recommendation dataset"):
        write_mql4grec(regression_dataset, tmp_path, "toy")
    amazon, _ = _read(_write_2014(tmp_path / "amazon"))
    with pytest.raises(HarnessError, match=r"name must be a non-empty file-name stem such as 'Instruments', got 'a/b'"):
        write_mql4grec(amazon, tmp_path / "out", "a/b")
    assert not (tmp_path / "out").exists()


# ---- registry and generator ----------------------------------------------------------------------


def test_datasets_are_registered():
    amazon, mql4grec = get_dataset_spec("amazon"), get_dataset_spec("mql4grec")
    assert amazon.reader is read_amazon and amazon.generator is generate_amazon
    assert mql4grec.reader is read_mql4grec and mql4grec.generator is None
    for spec in (amazon, mql4grec):
        assert (spec.task, spec.metric, spec.fold_scheme) == (TaskType.SEQUENTIAL_RECOMMENDATION, "ndcg@10_full",
                                                              "kfold")  # fmt: skip


SMALL = {"n_users": 120, "n_items": 60, "mean_length": 8, "image_size": 16}


@pytest.fixture(scope="module")
def amazon_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("amazon") / "amazon"
    generate_amazon(root, seed=0, **SMALL)
    return root


def test_generator_is_byte_identical_for_a_seed(tmp_path, amazon_template):
    generate_amazon(tmp_path / "b", seed=0, **SMALL)
    generate_amazon(tmp_path / "c", seed=1, **SMALL)
    image = min((amazon_template / "images").iterdir()).name
    for name in ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz", "README.md", f"images/{image}"):
        assert (amazon_template / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (amazon_template / "reviews_Beauty_5.json.gz").read_bytes() != (
        tmp_path / "c" / "reviews_Beauty_5.json.gz").read_bytes()  # fmt: skip


def test_generated_data_is_the_2014_format_with_gaps_and_a_planted_signal(amazon_template):
    meta_lines = gzip.decompress((amazon_template / "meta_Beauty.json.gz").read_bytes()).decode().splitlines()
    assert meta_lines[0].startswith("{'asin': 'B00")  # Python literals, not JSON
    dataset, messages = _read(amazon_template, min_user_interactions=5, min_item_interactions=5)
    stats, items = dataset.meta["stats"], dataset.meta["items"]
    assert dataset.meta["format"] == "amazon-2014" and len(dataset.train) == 120 and stats["users_filtered"] == 0
    assert re.fullmatch(r"Beauty: of the \d+ items, .*have no image.*", messages[-1])
    assert stats["items_without_meta"] + stats["items_without_title"] >= 1 and stats["items_without_image"] >= 1
    assert stats["tied_timestamps"] > 0 and Image.open(items["poster_path"].dropna().iloc[0]).size == (16, 16)
    assert set(dataset.meta["genres"]) == {"Skin Care", "Makeup", "Hair Care", "Fragrance", "Tools & Accessories",
                                           "Bath & Body"}  # fmt: skip
    # continuity: the test item shares the last history item's sub-category far more often than chance (~1/6)
    genre = dict(zip(items["item_id"], items["genres"]))
    pairs = zip(dataset.test["history"], dataset.test["target"])
    same = np.mean([genre[int(history[-1])] == genre[int(target)] for history, target in pairs])
    assert same > 0.45, same


def test_load_dataset_generates_the_embedded_default(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = load_dataset("amazon", data_root=tmp_path, generator_options=SMALL, log=lambda _: None)
    assert "have no image" in str(record[-1].message)
    assert dataset.name == "amazon" and (tmp_path / "amazon" / "reviews_Beauty_5.json.gz").is_file()
    with pytest.raises(HarnessError, match="Dataset 'mql4grec' has no embedded default"):
        load_dataset("mql4grec", data_root=tmp_path)


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(HarnessError, match=r"mean_length must be a number >= 5 \(the 5-core minimum\), got 3"):
        generate_amazon(tmp_path, mean_length=3)
    with pytest.raises(HarnessError, match="category must be a file-name word such as 'Beauty', got 'a b'"):
        generate_amazon(tmp_path / "out", category="a b")
    assert not (tmp_path / "out").exists()

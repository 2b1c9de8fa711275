"""The views dataset: the generator is deterministic and plants its signal; the reader validates."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data import get_dataset_spec
from harness.data.views import NEGATIVE_KEYWORDS, POSITIVE_KEYWORDS, generate_views, read_views
from harness.errors import HarnessError
from harness.tasks import TaskType


def _edit_csv(path: Path, edit) -> None:
    edit(pd.read_csv(path, dtype={"id": str})).to_csv(path, index=False)


def _warmth(paths) -> np.ndarray:
    """Mean red minus mean blue of each thumbnail, the colour cue the image latent drives."""
    values = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        values.append(pixels[..., 0].mean() - pixels[..., 2].mean())
    return np.array(values)


def _keyword_score(frame: pd.DataFrame) -> np.ndarray:
    """Positive minus negative keywords written in title and description (hashtags drop spaces)."""
    text = (frame["title"] + " " + frame["description"]).str.lower()

    def count(keywords):
        return sum(text.str.contains(kw) | text.str.contains(kw.replace(" ", "")) for kw in keywords)

    return (count(POSITIVE_KEYWORDS) - count(NEGATIVE_KEYWORDS)).to_numpy(dtype=float)


def _corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# ---- generator ---------------------------------------------------------------------------------


def test_generator_is_byte_identical_for_a_seed(tmp_path):
    generate_views(tmp_path / "a", seed=3, n_train=60, n_test=20)
    generate_views(tmp_path / "b", seed=3, n_train=60, n_test=20)
    generate_views(tmp_path / "c", seed=4, n_train=60, n_test=20)
    files = ["train.csv", "test.csv", "test_labels.csv", "README.md", "thumbnails/vid_00001.jpg"]
    files.append("thumbnails/vid_00080.jpg")
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()
    assert len(list((tmp_path / "a" / "thumbnails").glob("*.jpg"))) == 80


def test_generator_rejects_unknown_strengths(tmp_path):
    with pytest.raises(HarnessError, match="strengths.*'colour'.*image, text, age"):
        generate_views(tmp_path, n_train=5, n_test=5, strengths={"colour": 1.0})


def _generated(tmp_path, strengths, n_train=200):
    generate_views(tmp_path, seed=1, n_train=n_train, n_test=10, strengths=strengths)
    train = read_views(tmp_path, reference_year=2025).train
    return np.log1p(train["views"].to_numpy()), train


def test_image_signal_is_in_the_thumbnail_colours(tmp_path):
    target, train = _generated(tmp_path, {"image": 1.0, "text": 0.0, "age": 0.0})
    assert _corr(target, _warmth(train["image_path"])) > 0.7
    assert abs(_corr(target, np.log1p(train["age"]))) < 0.25
    assert abs(_corr(target, _keyword_score(train))) < 0.25


def test_age_signal_is_in_the_upload_year(tmp_path):
    target, train = _generated(tmp_path, {"image": 0.0, "text": 0.0, "age": 1.0})
    assert _corr(target, np.log1p(train["age"])) > 0.9
    assert abs(_corr(target, _warmth(train["image_path"]))) < 0.25


def test_text_signal_is_in_the_keywords(tmp_path):
    target, train = _generated(tmp_path, {"image": 0.0, "text": 1.0, "age": 0.0})
    assert _corr(target, _keyword_score(train)) > 0.9
    assert abs(_corr(target, _warmth(train["image_path"]))) < 0.25


def test_default_signal_explains_most_of_the_variance(tmp_path):
    target, train = _generated(tmp_path, None, n_train=300)
    features = np.c_[_warmth(train["image_path"]), _keyword_score(train), np.log1p(train["age"]), np.ones(len(train))]
    residual = target - features @ np.linalg.lstsq(features, target, rcond=None)[0]
    assert residual.var() < 0.3 * target.var()  # even a linear read of the cues beats the mean by far
    assert train["views"].min() < 2_000 and train["views"].max() > 500_000  # heavy-tailed counts


# ---- reader ------------------------------------------------------------------------------------


def test_reader_round_trips_the_generated_data(views_dir):
    dataset = read_views(views_dir)
    train, test = dataset.train, dataset.test
    assert dataset.name == "views" and dataset.task is TaskType.REGRESSION
    assert (dataset.id_col, dataset.target_col, dataset.group_col) == ("id", "views", None)
    assert list(train.columns) == ["id", "title", "description", "year", "age", "image_path", "image_ok", "views"]
    assert list(test.columns) == list(train.columns[:-1])
    assert train["views"].dtype == float and train["year"].dtype == np.int64 and train["age"].dtype == float
    assert pd.api.types.is_string_dtype(train["id"]) and pd.api.types.is_string_dtype(train["description"])
    assert train["image_ok"].all() and test["image_ok"].all() and dataset.meta["n_bad_images"] == 0
    reference = max(train["year"].max(), test["year"].max())
    assert dataset.meta["reference_year"] == reference
    assert (train["age"] == reference - train["year"]).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in test["image_path"])
    labels = pd.read_csv(views_dir / "test_labels.csv", dtype={"id": str})
    assert list(labels["id"]) == list(test["id"])
    raw = pd.read_csv(views_dir / "train.csv")
    assert np.allclose(train["views"], raw["views"]) and list(train["title"]) == list(raw["title"])


def test_reader_is_registered():
    spec = get_dataset_spec("views")
    assert spec.reader is read_views and spec.generator is generate_views
    assert (spec.metric, spec.fold_scheme) == ("msle", "stratified")


def test_explicit_reference_year(views_dir):
    dataset = read_views(views_dir, reference_year=2030)
    assert (dataset.train["age"] == 2030 - dataset.train["year"]).all() and dataset.meta["reference_year"] == 2030
    with pytest.raises(HarnessError, match="reference_year=2000 is earlier"):
        read_views(views_dir, reference_year=2000)


def test_missing_description_is_an_empty_string(views_dir):
    _edit_csv(views_dir / "test.csv", lambda f: f.assign(description=np.nan))
    assert (read_views(views_dir).test["description"] == "").all()


def test_column_mapping_and_image_column(views_dir):
    names = {"id": "video_id", "views": "view_count", "year": "upload_year"}
    for name in ("train.csv", "test.csv"):
        frame = pd.read_csv(views_dir / name, dtype={"id": str})
        frame["thumb"] = "pics/" + frame["id"] + ".jpeg"
        frame.rename(columns={k: v for k, v in names.items() if k in frame}).to_csv(views_dir / name, index=False)
    (views_dir / "thumbnails").rename(views_dir / "pics")
    for path in (views_dir / "pics").iterdir():
        path.rename(path.with_suffix(".jpeg"))

    with pytest.raises(HarnessError, match=r"train.csv: missing column 'id'.*video_id.*data.options.columns.id="):
        read_views(views_dir, image_column="thumb")
    dataset = read_views(views_dir, columns=names, image_column="thumb")
    assert list(dataset.train.columns)[-1] == "views" and "view_count" not in dataset.train
    assert dataset.train["image_ok"].all() and dataset.train["image_path"].str.endswith(".jpeg").all()
    with pytest.raises(HarnessError, match="unknown standard name.*'viewz'"):
        read_views(views_dir, columns={"viewz": "view_count"})


@pytest.mark.parametrize(
    "file, edit, pattern",
    [
        ("train.csv", lambda f: f.drop(columns="title"), r"train.csv: missing column 'title'; columns present: id, "),
        ("test.csv", lambda f: f.drop(columns="year"), r"test.csv: missing column 'year'"),
        ("train.csv", lambda f: f.assign(views=f["views"].where(f.index != 3)), r"'views' has 1 NaN"),
        ("train.csv", lambda f: f.assign(views=f["views"].mask(f.index == 3, -5)), r"'views' has 1 negative"),
        ("train.csv", lambda f: f.assign(views=f["views"].astype(str).mask(f.index == 2, "lots")),
         r"'views' has 1 non-numeric.*'lots'"),
        ("train.csv", lambda f: f.assign(year=f["year"].where(f.index != 1)), r"'year' has 1 missing upload years"),
        ("test.csv", lambda f: f.assign(year=f["year"].astype(str).mask(f.index == 1, "2010.5")),
         r"'year' must hold integer upload years, got '2010.5'"),
        ("train.csv", lambda f: f.assign(id=f["id"].mask(f.index == 5, f["id"][4])),
         r"train.csv: column 'id' has 1 duplicate"),
        ("test.csv", lambda f: f.iloc[:0], r"test.csv has no rows; a submission needs at least one test row"),
        ("train.csv", lambda f: f.iloc[:0], r"train.csv has no rows"),
    ],
)  # fmt: skip
def test_bad_csv_input_is_a_one_line_error(views_dir, file, edit, pattern):
    _edit_csv(views_dir / file, edit)
    with pytest.raises(HarnessError, match=pattern) as info:
        read_views(views_dir)
    assert "\n" not in str(info.value)


def test_id_in_both_train_and_test(views_dir):
    leaked = pd.read_csv(views_dir / "train.csv", dtype={"id": str})["id"].iloc[0]
    _edit_csv(views_dir / "test.csv", lambda f: f.assign(id=f["id"].mask(f.index == 0, leaked)))
    with pytest.raises(HarnessError, match=f"1 ids appear in both .*train.csv and .*test.csv.*{leaked}"):
        read_views(views_dir)


def test_missing_file_and_bad_policy(views_dir):
    with pytest.raises(HarnessError, match="on_bad_image must be one of 'error', 'zero', got 'skip'"):
        read_views(views_dir, on_bad_image="skip")
    (views_dir / "test.csv").unlink()
    with pytest.raises(HarnessError, match="test.csv: file not found"):
        read_views(views_dir)


def test_missing_thumbnail_is_an_error_by_default(views_dir):
    victim = sorted((views_dir / "thumbnails").iterdir())[0]
    victim.unlink()
    with pytest.raises(HarnessError, match=rf"1 of \d+ thumbnails .*{re.escape(victim.name)}.*does not exist"):
        read_views(views_dir)


def test_corrupt_thumbnail_is_masked_with_the_zero_policy(views_dir):
    victims = sorted((views_dir / "thumbnails").iterdir())[:2]
    victims[0].write_bytes(b"not a jpeg")
    victims[1].write_bytes(victims[1].read_bytes()[:200])  # truncated: the header parses, the pixels do not
    with pytest.raises(HarnessError, match=f"2 of .*{victims[0].name}.*not a decodable image"):
        read_views(views_dir)
    with pytest.warns(UserWarning, match=r"2 of \d+ thumbnails are missing or unreadable") as record:
        dataset = read_views(views_dir, on_bad_image="zero")
    assert len(record) == 1 and dataset.meta["n_bad_images"] == 2
    frames = pd.concat([dataset.train, dataset.test])
    assert set(frames.loc[~frames["image_ok"], "id"]) == {v.stem for v in victims}

"""Re-ID readers on small files in the real layouts, the query rule, and the embedded generator."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data import get_dataset_spec, load_dataset
from harness.data.reid import (
    CUE_SCALES,
    _image_cues,
    colour_histogram_features,
    generate_reid,
    load_reid_pixels,
    modality_mask,
    raw_pixel_features,
    read_dukemtmc,
    read_market1501,
    read_msmt17,
    read_reid_csv,
    read_rgbnt201,
    split_query_gallery,
)
from harness.errors import HarnessError
from harness.tasks import TaskType

TINY = {"n_train_ids": 5, "n_test_ids": 6, "n_cams": 4, "cams_per_id": 3, "images_per_id_cam": 2}


def _save(path: Path, size: tuple[int, int] = (8, 16), colour=(200, 30, 60)) -> Path:
    """A one-colour PNG of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _one_line_error(excinfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def _check_contract(dataset, modalities=("rgb",)) -> None:
    assert dataset.task is TaskType.REID
    assert (dataset.id_col, dataset.target_col, dataset.group_col) == ("id", "pid", "pid")
    paths = ["image_path", *(f"image_path_{m}" for m in modalities[1:])]
    assert dataset.media_cols == tuple(paths)
    assert list(dataset.train.columns) == ["id", "pid", "camid", *paths]
    assert list(dataset.test.columns) == ["id", "pid", "camid", *paths, "is_query", "is_gallery"]
    for frame in (dataset.train, dataset.test):
        assert frame["pid"].dtype == np.int64 and frame["camid"].dtype == np.int64
        assert (frame["camid"] >= 0).all()
        assert frame["id"].tolist() == sorted(frame["id"])
        assert all(Path(p).is_absolute() for p in frame["image_path"])
    assert dataset.test["is_query"].dtype == bool and dataset.test["is_gallery"].dtype == bool
    assert (dataset.test["is_query"] | dataset.test["is_gallery"]).all()
    ids = [*dataset.train["id"], *dataset.test["id"]]
    assert len(set(ids)) == len(ids)
    meta = dataset.meta
    assert meta["modalities"] == tuple(modalities) and isinstance(meta["notes"], list)
    assert meta["n_train_ids"] == dataset.train["pid"].nunique()
    assert len(meta["image_shape"]) == 3 and meta["image_shape"][2] == 3
    pixels = load_reid_pixels(dataset, dataset.test)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(dataset.test), *meta["image_shape"])


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["market1501", "dukemtmc", "msmt17", "rgbnt201", "reid_csv"])
def test_specs_are_group_folded_map_reid(name):
    spec = get_dataset_spec(name)
    assert (spec.task, spec.fold_scheme, spec.metric) == (TaskType.REID, "group", "map")
    assert (spec.generator is not None) == (name in ("market1501", "rgbnt201"))


# ----------------------------------------------------------------------------------------------
# Market-1501 / DukeMTMC-reID
# ----------------------------------------------------------------------------------------------


def _market(root: Path) -> Path:
    for name in ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c2s1_000100_01.jpg"]:
        _save(root / "bounding_box_train" / name)
    for name in ["0010_c1s1_000001_01.jpg", "0011_c2s1_000002_01.jpg"]:
        _save(root / "query" / name)
    for name in ["0010_c2s1_000003_01.jpg", "0010_c1s1_000004_01.jpg", "0011_c2s1_000005_01.jpg",
                 "0000_c4s1_000006_01.jpg", "-1_c3s1_000007_01.jpg", "-1_c5s1_000008_01.jpg"]:  # fmt: skip
        _save(root / "bounding_box_test" / name)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0")
    return root


def test_market_parses_pid_and_camera_drops_junk_keeps_distractors(tmp_path):
    dataset = read_market1501(_market(tmp_path / "market"))
    _check_contract(dataset)
    train, test = dataset.train, dataset.test
    assert train["id"].tolist() == ["bounding_box_train/0002_c1s1_000451_03.jpg",
                                    "bounding_box_train/0002_c3s1_000551_01.jpg",
                                    "bounding_box_train/0007_c2s1_000100_01.jpg"]  # fmt: skip
    assert train["pid"].tolist() == [2, 2, 7] and train["camid"].tolist() == [0, 2, 1]
    assert not test["id"].str.contains("-1_").any()  # junk dropped
    distractor = test[test["pid"] == 0]
    assert len(distractor) == 1 and distractor["is_gallery"].all() and not distractor["is_query"].any()
    query = test[test["is_query"]]
    assert query["id"].tolist() == ["query/0010_c1s1_000001_01.jpg", "query/0011_c2s1_000002_01.jpg"]
    assert not (test["is_query"] & test["is_gallery"]).any()
    first = tmp_path / "market" / "bounding_box_train" / "0002_c1s1_000451_03.jpg"
    assert Path(train["image_path"].iloc[0]) == first.absolute()
    notes = " | ".join(dataset.meta["notes"])
    assert "dropped 2 junk images (pid -1)" in notes and "kept 1 distractor images (pid 0)" in notes
    assert "1 query images of 1 identities have no gallery image" in notes  # 0011: gallery only under c2
    assert "skipped 1 files that are not images" in notes and "Thumbs.db" in notes
    assert dataset.meta["image_shape"] == (16, 8, 3) and dataset.meta["format"] == "market1501"


def test_market_is_found_in_a_single_child_folder_only(tmp_path):
    _market(tmp_path / "Market-1501-v15.09.15")
    assert read_market1501(tmp_path).root == tmp_path / "Market-1501-v15.09.15"
    _market(tmp_path / "copy")
    with pytest.raises(HarnessError) as excinfo:
        read_market1501(tmp_path)
    _one_line_error(excinfo, str(tmp_path), "bounding_box_train/", "2 folders inside it")


def test_duke_names_parse(tmp_path):
    root = tmp_path / "duke"
    _save(root / "bounding_box_train" / "0001_c2_f0046182.jpg")
    _save(root / "query" / "0005_c1_f0000001.jpg")
    _save(root / "bounding_box_test" / "0005_c8_f0000002.jpg")
    dataset = read_dukemtmc(root)
    _check_contract(dataset)
    assert dataset.name == "dukemtmc"
    assert dataset.train[["pid", "camid"]].values.tolist() == [[1, 1]]
    assert dataset.test[["pid", "camid", "is_query"]].values.tolist() == [[5, 7, False], [5, 0, True]]  # sorted by id


@pytest.mark.parametrize("name, needle", [("img_001.jpg", "does not parse"), ("0002_c0s1_000451_03.jpg", "c0")])
def test_market_names_that_do_not_parse_are_one_line_errors(tmp_path, name, needle):
    root = _market(tmp_path / "market")
    _save(root / "query" / name)
    with pytest.raises(HarnessError) as excinfo:
        read_market1501(root)
    _one_line_error(excinfo, name, needle, "<pid>_c<camera>")


def test_image_size_mismatch_is_an_error_unless_resizing(tmp_path):
    root = _market(tmp_path / "market")
    _save(root / "query" / "0010_c3s1_000009_01.jpg", size=(10, 20))
    with pytest.raises(HarnessError) as excinfo:
        read_market1501(root)
    _one_line_error(excinfo, "0010_c3s1_000009_01.jpg", "10x20", "8x16", "image_size")
    dataset = read_market1501(root, image_size=(12, 6))
    assert dataset.meta["image_shape"] == (12, 6, 3) and dataset.options == {"image_size": (12, 6)}
    pixels = load_reid_pixels(dataset, dataset.test)
    assert pixels.shape == (len(dataset.test), 12, 6, 3) and (pixels[..., 0] > 150).all()
    with pytest.raises(HarnessError) as excinfo:
        read_market1501(root, image_size=128)
    _one_line_error(excinfo, "image_size", "(height, width)")


# ----------------------------------------------------------------------------------------------
# MSMT17
# ----------------------------------------------------------------------------------------------


def _msmt17(root: Path, train_dir: str = "train", test_dir: str = "test", val: bool = True) -> Path:
    lists = {
        "list_train.txt": (train_dir, ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                       "0001/0001_004_05_0303noon_0020_1.jpg 1"]),
        "list_query.txt": (test_dir, ["0000/0000_001_02_0113morning_0001_0.jpg 0"]),
        "list_gallery.txt": (test_dir, ["0000/0000_002_15_0113noon_0002_0.jpg 0", "",
                                        "0003/0003_000_02_0113noon_0003_0.jpg 3"]),
    }  # fmt: skip
    if val:
        lists["list_val.txt"] = (train_dir, ["0002/0002_000_03_0303morning_0030_0.jpg 2"])
    for name, (directory, lines) in lists.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(lines) + "\n")
        for line in filter(None, lines):
            _save(root / directory / line.split()[0])
    return root


@pytest.mark.parametrize("dirs", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_lists_with_val_joining_train(tmp_path, dirs):
    dataset = read_msmt17(_msmt17(tmp_path / "msmt", *dirs))
    _check_contract(dataset)
    train, test = dataset.train, dataset.test
    assert train["id"].tolist()[0] == f"{dirs[0]}/0000/0000_000_01_0303morning_0015_0.jpg"
    assert train[["pid", "camid"]].values.tolist() == [[0, 0], [1, 4], [2, 2]]  # the val row joined
    assert test[["pid", "camid", "is_query"]].values.tolist() == [[0, 1, True], [0, 14, False], [3, 1, False]]
    assert dataset.meta["n_train_ids"] == 3


def test_msmt17_without_val_says_so(tmp_path):
    dataset = read_msmt17(_msmt17(tmp_path / "msmt", val=False))
    assert len(dataset.train) == 2 and any("list_val.txt" in note for note in dataset.meta["notes"])


@pytest.mark.parametrize("line, needles", [
    ("0000/0000_003_01_0303morning_0016_0.jpg", ["line 3", "'<image path> <pid>'"]),
    ("0000/0000_003_01_0303morning_0016_0.jpg x7", ["line 3", "pid 'x7'"]),
    ("0000/0000_003_xx_0303morning_0016_0.jpg 0", ["line 3", "third '_' field"]),
    ("0000/0000_003_01_0303morning_0099_0.jpg 0", ["line 3", "not found"]),
    ("0001/0001_004_05_0303noon_0020_1.jpg 1", ["line 3", "also listed in list_train.txt, line 2"]),
])  # fmt: skip
def test_msmt17_bad_lines_name_the_file_and_line(tmp_path, line, needles):
    root = _msmt17(tmp_path / "msmt")
    path = root / "list_train.txt"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(HarnessError) as excinfo:
        read_msmt17(root)
    _one_line_error(excinfo, "list_train.txt", *needles)


# ----------------------------------------------------------------------------------------------
# RGBNT201
# ----------------------------------------------------------------------------------------------


def _rgbnt(root: Path, skip: tuple[str, str] | None = None) -> Path:
    names = {"train_171": ["000001_cam1_0_00.jpg", "000001_cam3_0_00.jpg", "000004_cam2_0_01.jpg"],
             "test": ["000123_cam2_0_00.jpg", "000123_cam4_0_00.jpg", "000124_cam1_0_00.jpg"]}  # fmt: skip
    for split, files in names.items():
        for k, name in enumerate(files):
            for m, colour in zip(("RGB", "NI", "TI"), ((200, 10, 10), (90, 90, 90), (250, 250, 250))):
                if skip != (m, name):
                    _save(root / split / m / name, colour=colour)
    return root


def test_rgbnt201_reads_three_modalities_and_test_is_query_and_gallery(tmp_path):
    dataset = read_rgbnt201(_rgbnt(tmp_path / "rgbnt"))
    _check_contract(dataset, ("rgb", "ni", "ti"))
    test = dataset.test
    assert test["id"].tolist()[0] == "test/RGB/000123_cam2_0_00.jpg"
    assert test[["pid", "camid"]].values.tolist() == [[123, 1], [123, 3], [124, 0]]
    assert test["is_query"].all() and test["is_gallery"].all()
    assert Path(test["image_path_ti"].iloc[0]).parts[-2:] == ("TI", "000123_cam2_0_00.jpg")
    assert load_reid_pixels(dataset, test, "ni")[..., 0].mean() == pytest.approx(90, abs=1)
    assert "1 query images of 1 identities" in " ".join(dataset.meta["notes"])  # 124: one camera only
    assert modality_mask(test, ("rgb", "ni", "ti")).all()


def test_rgbnt201_missing_modality_is_an_error_or_masked(tmp_path):
    root = _rgbnt(tmp_path / "rgbnt", skip=("NI", "000123_cam4_0_00.jpg"))
    with pytest.raises(HarnessError) as excinfo:
        read_rgbnt201(root)
    missing = str(root / "test" / "NI" / "000123_cam4_0_00.jpg")
    _one_line_error(excinfo, missing, "ni modality", "missing_modality='mask'")
    dataset = read_rgbnt201(root, missing_modality="mask")
    row = dataset.test["id"].tolist().index("test/RGB/000123_cam4_0_00.jpg")
    assert dataset.test["image_path_ni"].iloc[row] is None
    assert modality_mask(dataset.test, ("rgb", "ni", "ti"))[:, 1].tolist() == [True, False, True]
    assert not load_reid_pixels(dataset, dataset.test, "ni")[row].any()
    assert "1 samples have no NI image" in " ".join(dataset.meta["notes"])
    assert dataset.options["missing_modality"] == "mask"


def test_rgbnt201_bad_name_is_an_error(tmp_path):
    root = _rgbnt(tmp_path / "rgbnt")
    _save(root / "test" / "RGB" / "123_c2.jpg")
    with pytest.raises(HarnessError) as excinfo:
        read_rgbnt201(root)
    _one_line_error(excinfo, "123_c2.jpg", "<6-digit pid>_cam<camera>")


# ----------------------------------------------------------------------------------------------
# Generic CSV
# ----------------------------------------------------------------------------------------------


def _csv(root: Path, rows: list[str], header: str = "path,pid,camid,modality,split", file="reid.csv") -> Path:
    for row in rows:
        _save(root / Path(file).parent / row.split(",")[0])
    (root / file).parent.mkdir(parents=True, exist_ok=True)
    (root / file).write_text("\n".join([header, *rows]) + "\n")
    return root


MODAL_ROWS = [
    "rgb/a1.png,1,0,RGB,train", "ni/a1.png,1,0,ni,train", "rgb/a2.png,1,1,rgb,train", "ni/a2.png,1,1,NI,train",
    "rgb/b1.png,2,0,rgb,query", "ni/b1.png,2,0,ni,query", "rgb/b2.png,2,1,rgb,gallery", "ni/b2.png,2,1,ni,gallery",
    "rgb/c1.png,3,0,rgb,test", "ni/c1.png,3,0,ni,test",
]  # fmt: skip


def test_csv_with_split_and_modality(tmp_path):
    dataset = read_reid_csv(_csv(tmp_path / "data", MODAL_ROWS))
    _check_contract(dataset, ("rgb", "ni"))
    test = dataset.test
    assert test["id"].tolist() == ["rgb/b1.png", "rgb/b2.png", "rgb/c1.png"]
    assert test[["is_query", "is_gallery"]].values.tolist() == [[True, False], [False, True], [True, True]]
    assert Path(test["image_path_ni"].iloc[0]).parts[-2:] == ("ni", "b1.png")
    assert dataset.meta["format"] == "csv" and dataset.meta["modalities"] == ("rgb", "ni")
    assert dataset.meta["notes"] == ["1 query images of 1 identities have no gallery image of their identity under "
                                     "another camera (the metric skips them)"]  # c1: pid 3 has one camera


def test_csv_paths_are_relative_to_the_csv_folder(tmp_path):
    root = _csv(tmp_path / "data", ["x/a.png,1,0,train", "x/b.png,2,0,query", "x/c.png,2,1,gallery"],
                header="path,pid,camid,split", file="lists/reid.csv")  # fmt: skip
    dataset = read_reid_csv(root, file="lists/reid.csv")
    _check_contract(dataset)
    assert dataset.train["id"].tolist() == ["lists/x/a.png"] and dataset.options["file"] == "lists/reid.csv"


def test_csv_without_split_uses_a_stable_half_of_the_identities(tmp_path):
    rows = [f"img/{pid}_{cam}_{k}.png,{pid},{cam}" for pid in range(10) for cam in range(3) for k in range(2)]
    first = read_reid_csv(_csv(tmp_path / "a", rows, header="path,pid,camid"))
    _check_contract(first)
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    second = read_reid_csv(_csv(tmp_path / "b", shuffled, header="path,pid,camid"))
    pd.testing.assert_frame_equal(first.test.drop(columns="image_path"), second.test.drop(columns="image_path"))
    assert first.test["pid"].nunique() == 5 and first.meta["n_train_ids"] == 5
    assert set(first.test["pid"]).isdisjoint(first.train["pid"])
    assert (first.test["is_query"] != first.test["is_gallery"]).all()
    assert first.test.groupby("pid")["is_query"].sum().eq(3).all()  # one query per camera
    assert "no split column: 5 of 10 identities" in first.meta["notes"][0]


@pytest.mark.parametrize("rows, header, needles", [
    (["rgb/a.png,1,0,xray,train"], None, ["line 2", "modality 'xray'", "rgb, ni, ti"]),
    (["rgb/a.png,one,0,rgb,train"], None, ["line 2", "pid 'one'", "non-negative integer"]),
    (["rgb/a.png,1,1.5,rgb,train"], None, ["line 2", "camid '1.5'"]),
    (["rgb/a.png,1,0,rgb,valid"], None, ["line 2", "split 'valid'"]),
    (["rgb/a.png,1,0"], "path,pid,cam", ["line 1", "no camid column"]),
    (["rgb/a.png,1,0,rgb,train", "rgb/a.png,1,0,ni,train"], None, ["line 3", "repeats line 2"]),
    (["ni/a.png,1,0,ni,train"], None, ["line 2", "no rgb row"]),
])  # fmt: skip
def test_csv_bad_values_are_one_line_errors(tmp_path, rows, header, needles):
    root = _csv(tmp_path / "data", rows, header=header or "path,pid,camid,modality,split")
    with pytest.raises(HarnessError) as excinfo:
        read_reid_csv(root)
    _one_line_error(excinfo, "reid.csv", *needles)


def test_csv_missing_image_and_missing_modality(tmp_path):
    root = _csv(tmp_path / "data", MODAL_ROWS)
    (root / "ni" / "b2.png").unlink()
    with pytest.raises(HarnessError) as excinfo:
        read_reid_csv(root)
    _one_line_error(excinfo, "reid.csv, line 9", "b2.png", "not found")
    (root / "reid.csv").write_text("\n".join(["path,pid,camid,modality,split", *MODAL_ROWS[:7], *MODAL_ROWS[8:]]))
    with pytest.raises(HarnessError) as excinfo:
        read_reid_csv(root)
    _one_line_error(excinfo, "reid.csv, line 8", "no ni row")
    dataset = read_reid_csv(root, missing_modality="mask")
    assert modality_mask(dataset.test, ["rgb", "ni", "ti"]).tolist() == [[True, True, False], [True, False, False],
                                                                          [True, True, False]]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The query rule
# ----------------------------------------------------------------------------------------------


def _most_queries(counts: list[int]) -> int:
    """Brute force: the most cameras that can each hold a query, every query keeping a match elsewhere."""
    cams = range(len(counts))
    for size in range(len(counts), 0, -1):
        for chosen in itertools.combinations(cams, size):
            gallery = [n - (c in chosen) for c, n in enumerate(counts)]
            if all(sum(gallery) - gallery[c] > 0 for c in chosen):
                return size
    return 0


@pytest.mark.parametrize("seed", range(6))
def test_split_query_gallery_properties_on_random_rows(seed):
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(25):
        n_cams = int(rng.integers(1, 6))
        singles = rng.random() < 0.4  # every camera of this pid has exactly one image
        for cam in rng.choice(8, n_cams, replace=False):
            for k in range(1 if singles else int(rng.integers(1, 4))):
                rows.append((f"{rng.integers(10**6):06d}_{pid}_{cam}_{k}", pid, int(cam)))
    frame = pd.DataFrame(rows, columns=["id", "pid", "camid"])
    query = split_query_gallery(frame)
    assert query.dtype == bool and query.shape == (len(frame),)
    chosen = frame[query]
    assert not chosen.duplicated(["pid", "camid"]).any()  # at most one query per (pid, camera)
    gallery = frame[~query]
    for _, row in chosen.iterrows():  # every query keeps a gallery match under another camera
        assert ((gallery["pid"] == row["pid"]) & (gallery["camid"] != row["camid"])).any()
    for pid, group in frame.groupby("pid"):
        assert query[group.index].sum() == _most_queries(group["camid"].value_counts().tolist())
    permutation = rng.permutation(len(frame))  # independent of row order
    again = split_query_gallery(frame.iloc[permutation].reset_index(drop=True))
    assert (again == query[permutation]).all()


def test_split_query_gallery_small_cases():
    frame = pd.DataFrame({"id": list("abcdef"), "pid": [1, 1, 2, 2, 2, 3], "camid": [0, 1, 0, 1, 2, 0]})
    # pid 1: two single-image cameras -> one query; pid 2: three -> two; pid 3: one camera -> none
    assert split_query_gallery(frame).tolist() == [True, False, True, True, False, False]
    with pytest.raises(HarnessError):
        split_query_gallery(frame.drop(columns="camid"))


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["market1501", "rgbnt201"])
def test_generator_is_byte_identical_and_reads_back(tmp_path, layout):
    extra = {"n_distractors": 3, "n_junk": 2} if layout == "market1501" else {}
    generate_reid(tmp_path / "a", layout=layout, **TINY, **extra)
    generate_reid(tmp_path / "b", layout=layout, **TINY, **extra)
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b") and "README.md" in first
    reader = read_market1501 if layout == "market1501" else read_rgbnt201
    dataset = reader(tmp_path / "a")
    modalities = ("rgb",) if layout == "market1501" else ("rgb", "ni", "ti")
    _check_contract(dataset, modalities)
    assert dataset.meta["image_shape"] == (64, 32, 3) and dataset.meta["n_train_ids"] == 5
    assert len(dataset.train) == 5 * 3 * 2
    test = dataset.test
    if layout == "market1501":
        notes = ["dropped 2 junk images (pid -1)", "kept 3 distractor images (pid 0) in the gallery"]
        assert dataset.meta["notes"] == notes
        real = test[test["pid"] > 0]
        assert real["is_query"].sum() == 6 * 3  # one query per test identity and camera
        assert real[real["is_query"]].groupby("pid")["camid"].nunique().eq(3).all()
    else:
        assert test["is_query"].all() and test["is_gallery"].all() and len(test) == 6 * 3 * 2
        ni = load_reid_pixels(dataset, test, "ni")
        assert (ni[..., 0] == ni[..., 1]).all()  # near-infrared is grey
    generate_reid(tmp_path / "c", layout=layout, **TINY, **extra, seed=1)
    other = _files(tmp_path / "c")
    assert not {v for k, v in other.items() if k.endswith(".jpg")} & {v for k, v in first.items() if k.endswith(".jpg")}


def test_cue_scales_fix_only_the_scales_named():
    for image in range(3):  # the same image index draws the same fine cues with or without the others
        assert _image_cues(0, 7, image, ("fine",))["fine"] == _image_cues(0, 7, image, CUE_SCALES)["fine"]
    everything = [_image_cues(0, 7, image, CUE_SCALES) for image in (0, 1)]
    fine_only = [_image_cues(0, 7, image, ("fine",)) for image in (0, 1)]
    no_fine = [_image_cues(0, 7, image, ("mid", "coarse")) for image in (0, 1)]
    assert _same(everything[0], everything[1], CUE_SCALES)
    assert _same(*fine_only, ["fine"]) and not _same(*fine_only, ["mid"]) and not _same(*fine_only, ["coarse"])
    assert not _same(*no_fine, ["fine"]) and _same(*no_fine, ["mid", "coarse"])
    assert _same(_image_cues(0, 7, 0, ("fine",)), _image_cues(0, 8, 0, ("fine",)), ["mid", "coarse"])


def _same(a: dict, b: dict, scales) -> bool:
    return all(repr(a[s]) == repr(b[s]) for s in scales)


def test_fine_only_set_differs_from_the_full_one_in_pixels_not_in_names(tmp_path):
    options = dict(TINY, n_train_ids=2, n_test_ids=2, n_distractors=0, n_junk=0)
    generate_reid(tmp_path / "all", **options)
    generate_reid(tmp_path / "fine", **options, cue_scales=("fine",))
    full, fine = _files(tmp_path / "all"), _files(tmp_path / "fine")
    assert full.keys() == fine.keys()
    assert sum(full[k] != fine[k] for k in full if k.endswith(".jpg")) == len(full) - 1


def test_generator_rejects_bad_arguments(tmp_path):
    for kwargs, needle in [({"cue_scales": ("texture",)}, "cue_scales"), ({"layout": "duke"}, "layout"),
                           ({"n_cams": 12}, "n_cams"),
                           ({"layout": "rgbnt201", "n_distractors": 4}, "n_distractors")]:  # fmt: skip
        with pytest.raises(HarnessError) as excinfo:
            generate_reid(tmp_path / "x", **kwargs)
        _one_line_error(excinfo, needle)


@pytest.mark.parametrize("name", ["market1501", "rgbnt201"])
def test_load_dataset_generates_the_embedded_default_and_reads_it(tmp_path, name):
    messages = []
    options = dict(TINY, **({"n_distractors": 2, "n_junk": 1} if name == "market1501" else {}))
    dataset = load_dataset(name, data_root=tmp_path, generator_options=options, log=messages.append)
    assert (tmp_path / name / "README.md").is_file() and "Generating" in messages[0]
    assert dataset.name == name and dataset.meta["n_train_ids"] == 5
    assert len(dataset.fingerprint) == 16


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------


def test_baseline_features():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 8, 3), dtype=np.uint8)
    hist = colour_histogram_features(pixels)
    assert hist.dtype == np.float32 and hist.shape == (5, 512)
    np.testing.assert_allclose((hist**2).sum(1), 1, rtol=1e-6)
    raw = raw_pixel_features(pixels)
    assert raw.dtype == np.float32 and raw.shape == (5, 16 * 8 * 3) and raw.max() <= 1
    with pytest.raises(HarnessError):
        raw_pixel_features(pixels[..., 0])

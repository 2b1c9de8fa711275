"""Image classification readers on tiny files in the real formats, and the embedded generator."""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import get_dataset_spec, load_dataset
from harness.data.images import (
    FASHION_MNIST_CLASSES,
    SYNTHETIC_CLASSES,
    generate_cifar10,
    load_pixels,
    read_cifar10,
    read_cifar100,
    read_fashion_mnist,
    read_image_folder,
    read_mnist,
)
from harness.errors import HarnessError
from harness.folds import make_folds
from harness.tasks import TaskType

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _planes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random images as CIFAR rows: 1024 red, 1024 green, 1024 blue values each."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: Path, value, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value, protocol=protocol))


def _write_cifar10(folder: Path, *, test_labels=None, names=None, sizes=(2, 2, 2, 2, 2)) -> list[np.ndarray]:
    """A cifar-10-batches-py folder with bytes keys (as a Python 2 pickle reads); returns the data rows."""
    batches = []
    for k, size in enumerate(sizes, start=1):
        data = _planes(size, seed=k)
        _dump(folder / f"data_batch_{k}", {b"batch_label": b"training", b"labels": [(k + i) % 10 for i in range(size)],
                                           b"data": data, b"filenames": [b"x.png"] * size})  # fmt: skip
        batches.append(data)
    test = _planes(3, seed=9)
    _dump(folder / "test_batch", {b"labels": [1, 2, 3] if test_labels is None else test_labels, b"data": test})
    names = CIFAR10_NAMES if names is None else names
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    return [*batches, test]


def _write_idx(path: Path, array: np.ndarray, magic: int, *, gz: bool, cut: int = 0) -> None:
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - cut]
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)


def _write_mnist(root: Path, *, gz: bool, n_train: int = 4, n_test: int = 3, labels=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10 if labels is None else np.asarray(labels),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10,
    }
    for name, array in arrays.items():
        _write_idx(root / name, array, 2051 if "images" in name else 2049, gz=gz)
    return arrays


def _save(path: Path, size: tuple[int, int] = (6, 4), colour=(200, 30, 60), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def _check_schema(dataset) -> None:
    assert dataset.task is TaskType.CLASSIFICATION and (dataset.id_col, dataset.target_col) == ("id", "label")
    ids = [*dataset.train["id"], *dataset.test["id"]]
    assert len(set(ids)) == len(ids)
    for frame in (dataset.train, dataset.test):
        assert frame["label"].dtype == np.int64
        assert frame["label"].between(0, dataset.meta["n_classes"] - 1).all()
    meta = dataset.meta
    assert len(meta["classes"]) == len(meta["class_texts"]) == meta["n_classes"]
    assert meta["image_shape"][2] in (1, 3) and isinstance(meta["format"], str)
    pixels = load_pixels(dataset, dataset.test)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(dataset.test), *meta["image_shape"])


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist", "image_folder"])
def test_specs_are_stratified_accuracy_classification(name):
    spec = get_dataset_spec(name)
    assert (spec.task, spec.fold_scheme, spec.metric) == (TaskType.CLASSIFICATION, "stratified", "accuracy")
    assert (spec.generator is not None) == (name == "cifar10")


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------


def test_cifar10_reads_channel_major_rows_as_hwc(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    rows = _write_cifar10(folder)
    # a hand-made image: red = row index, green = column index, blue = 7
    r, c = np.mgrid[0:32, 0:32]
    rows[0][1] = np.concatenate([r.ravel(), c.ravel(), np.full(1024, 7)]).astype(np.uint8)
    _dump(folder / "data_batch_1", {b"labels": [1, 2], b"data": rows[0]})

    for root in (folder, tmp_path):  # the batches folder or its parent
        dataset = read_cifar10(root)
        _check_schema(dataset)
    assert dataset.train["id"].tolist()[:2] == ["train-00000", "train-00001"]
    assert dataset.test["id"].iloc[0] == "test-00000"
    assert dataset.train["label"].tolist()[:2] == [1, 2] and dataset.test["label"].tolist() == [1, 2, 3]
    assert dataset.test["image_index"].tolist() == [10, 11, 12]  # train rows first
    assert dataset.meta["classes"] == CIFAR10_NAMES and dataset.meta["image_shape"] == (32, 32, 3)
    assert dataset.meta["class_texts"][0] == "a photo of an airplane." and dataset.meta["format"] == "cifar-10-python"
    pixel = load_pixels(dataset, dataset.train.iloc[[1]])[0]
    assert (pixel[..., 0] == r).all() and (pixel[..., 1] == c).all() and (pixel[..., 2] == 7).all()
    # a test row: channel planes of the last file, row 2
    assert (load_pixels(dataset, dataset.test.iloc[[2]])[0] == rows[-1][2].reshape(3, 32, 32).transpose(1, 2, 0)).all()


def test_cifar10_fingerprint_changes_with_one_pixel(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    rows = _write_cifar10(folder)
    before = read_cifar10(folder).fingerprint
    assert read_cifar10(folder).fingerprint == before
    rows[-1][0, 5] ^= 1
    _dump(folder / "test_batch", {b"labels": [1, 2, 3], b"data": rows[-1]})
    assert read_cifar10(folder).fingerprint != before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_labels": [1, 12, 3]}, r"test_batch: 1 labels in 'labels' outside 0\.\.9 \(e\.g\. 12\); batches\.meta"),
        ({"test_labels": [1, 2]}, r"test_batch: 3 images but 2 labels in 'labels'"),
        ({"sizes": (2, 0, 2, 2, 2)}, r"data_batch_2: holds no images"),
        ({"names": []}, r"batches\.meta: 'label_names' must be a non-empty list"),
    ],
)
def test_cifar10_rejects_bad_batches(tmp_path, kwargs, match):
    _write_cifar10(tmp_path, **kwargs)
    with pytest.raises(HarnessError, match=match):
        read_cifar10(tmp_path)


def test_cifar10_rejects_missing_files_and_foreign_pickles(tmp_path):
    with pytest.raises(HarnessError, match=r"neither it nor .*cifar-10-batches-py holds batches\.meta"):
        read_cifar10(tmp_path)
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(HarnessError, match=r"data_batch_5: file not found"):
        read_cifar10(tmp_path)
    _dump(tmp_path / "data_batch_5", OrderedDict(data=_planes(1), labels=[0]))  # anything but numpy is refused
    with pytest.raises(HarnessError, match=r"data_batch_5: not a readable CIFAR pickle .*collections\.OrderedDict"):
        read_cifar10(tmp_path)
    (tmp_path / "data_batch_5").write_bytes(pickle.dumps({b"data": _planes(2), b"labels": [0, 1]})[:-40])
    with pytest.raises(HarnessError, match=r"data_batch_5: not a readable CIFAR pickle"):
        read_cifar10(tmp_path)
    _dump(tmp_path / "data_batch_5", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(HarnessError, match=r"data_batch_5: 'data' must be a uint8 array \[N, 3072\].*\(2, 1024\)"):
        read_cifar10(tmp_path)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    fine, coarse = [f"class_{i}" for i in range(100)], [f"super {i}" for i in range(20)]
    fine[1] = "aquarium_fish"
    # str keys, default protocol: how a Python 3 user would write them
    _dump(folder / "meta", {"fine_label_names": fine, "coarse_label_names": coarse}, protocol=pickle.HIGHEST_PROTOCOL)
    _dump(folder / "train", {"data": _planes(4), "fine_labels": [99, 1, 2, 3], "coarse_labels": [19, 0, 1, 2]},
          protocol=pickle.HIGHEST_PROTOCOL)  # fmt: skip
    _dump(folder / "test", {"data": _planes(2, seed=1), "fine_labels": [5, 6], "coarse_labels": [3, 4]},
          protocol=pickle.HIGHEST_PROTOCOL)  # fmt: skip

    fine_set, coarse_set = read_cifar100(tmp_path), read_cifar100(folder, label_mode="coarse")
    for dataset in (fine_set, coarse_set):
        _check_schema(dataset)
    assert fine_set.meta["n_classes"] == 100 and fine_set.train["label"].tolist() == [99, 1, 2, 3]
    assert fine_set.meta["class_texts"][1] == "a photo of an aquarium fish."
    assert coarse_set.meta["classes"] == coarse and coarse_set.test["label"].tolist() == [3, 4]
    assert coarse_set.options == {"label_mode": "coarse"} and coarse_set.fingerprint != fine_set.fingerprint
    with pytest.raises(HarnessError, match=r"label_mode must be 'fine' or 'coarse', got 'medium'"):
        read_cifar100(folder, label_mode="medium")


# ----------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_plain_and_gzip(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    dataset = read_mnist(tmp_path)
    _check_schema(dataset)
    assert dataset.meta["classes"] == [str(d) for d in range(10)] and dataset.meta["image_shape"] == (28, 28, 1)
    assert dataset.train["label"].tolist() == [0, 1, 2, 3] and dataset.test["label"].tolist() == [3, 4, 5]
    assert (load_pixels(dataset, dataset.test)[..., 0] == arrays["t10k-images-idx3-ubyte"]).all()
    fashion = read_fashion_mnist(tmp_path)
    assert fashion.meta["classes"] == list(FASHION_MNIST_CLASSES) and fashion.meta["classes"][0] == "T-shirt/top"
    assert fashion.meta["class_texts"][9] == "a photo of an ankle boot." and fashion.meta["format"] == "idx"


def test_idx_rejects_wrong_magic_truncation_and_count_mismatch(tmp_path):
    arrays = _write_mnist(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte"
    _write_idx(images, arrays["train-images-idx3-ubyte"], 2049, gz=True)
    with pytest.raises(HarnessError, match=r"train-images-idx3-ubyte\.gz: magic number 2049, expected 2051"):
        read_mnist(tmp_path)
    _write_idx(images, arrays["train-images-idx3-ubyte"], 2051, gz=True, cut=5)
    with pytest.raises(HarnessError, match=r"ubyte\.gz: truncated: 3131 bytes after the header, expected 3136"):
        read_mnist(tmp_path)
    images.with_name(images.name + ".gz").write_bytes(gzip.compress(b"\x00" * 64)[:-9])
    with pytest.raises(HarnessError, match=r"ubyte\.gz: not a readable gzip file"):
        read_mnist(tmp_path)
    _write_idx(images, arrays["train-images-idx3-ubyte"][:3], 2051, gz=False)  # the plain file wins
    with pytest.raises(HarnessError, match=r"train-images-idx3-ubyte: 3 images but train-labels-idx1-ubyte\.gz holds"):
        read_mnist(tmp_path)


def test_idx_rejects_labels_outside_the_classes_and_empty_splits(tmp_path):
    _write_mnist(tmp_path, gz=False, labels=[0, 12, 3, 4])
    with pytest.raises(HarnessError, match=r"train-labels-idx1-ubyte: 1 labels outside 0\.\.9 \(e\.g\. 12\)"):
        read_mnist(tmp_path)
    _write_mnist(tmp_path, gz=False, n_test=0)
    with pytest.raises(HarnessError, match=r"t10k-images-idx3-ubyte: holds no images"):
        read_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(HarnessError, match=r"t10k-labels-idx1-ubyte: not found \(nor t10k-labels-idx1-ubyte\.gz\)"):
        read_mnist(tmp_path)


# ----------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------


def test_image_folder_rows_and_pixels(tmp_path):
    _save(tmp_path / "train" / "dog" / "b.png", colour=(1, 2, 3))
    _save(tmp_path / "train" / "dog" / "nested" / "c.jpeg")
    _save(tmp_path / "train" / "cat" / "a.png", colour=(10, 20, 30))
    _save(tmp_path / "test" / "cat" / "z.PNG", colour=(40, 50, 60))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / ".DS_Store").write_text("hidden")

    with pytest.warns(UserWarning, match=r"skipped 1 files that are not images .*first: .*notes\.txt"):
        dataset = read_image_folder(tmp_path)
    _check_schema(dataset)
    assert dataset.meta["classes"] == ["cat", "dog"] and dataset.meta["image_shape"] == (4, 6, 3)
    assert dataset.train["id"].tolist() == ["train/cat/a.png", "train/dog/b.png", "train/dog/nested/c.jpeg"]
    assert dataset.train["label"].tolist() == [0, 1, 1] and dataset.test["id"].tolist() == ["test/cat/z.PNG"]
    assert Path(dataset.train["image_path"].iloc[0]).is_absolute()
    assert dataset.meta["class_texts"] == ["a photo of a cat.", "a photo of a dog."]
    expected = np.array([(1, 2, 3), (10, 20, 30)], dtype=np.uint8)[:, None, None]  # rows 1 and 0, every pixel
    assert (load_pixels(dataset, dataset.train.iloc[[1, 0]]) == expected).all()
    before = dataset.fingerprint
    (tmp_path / "train" / "cat" / "notes.txt").unlink()
    assert read_image_folder(tmp_path, channels=1).meta["image_shape"] == (4, 6, 1)
    _save(tmp_path / "train" / "cat" / "a.png", colour=(11, 20, 30))  # replaced file: new size/mtime stamp
    assert read_image_folder(tmp_path).fingerprint != before


def test_image_folder_greyscale_from_first_image(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png", colour=(77,), mode="L")
    _save(tmp_path / "test" / "a" / "2.png", colour=(9, 9, 9))
    dataset = read_image_folder(tmp_path)
    assert dataset.meta["image_shape"] == (4, 6, 1)
    assert (load_pixels(dataset, dataset.train) == 77).all()


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png", size=(6, 4))
    _save(tmp_path / "train" / "a" / "2.png", size=(8, 8), colour=(5, 6, 7))
    _save(tmp_path / "test" / "a" / "3.png", size=(3, 3))
    with pytest.raises(HarnessError, match=r"train/a/2\.png: image is 8x8 but .*1\.png is 6x4; pass image_size="):
        read_image_folder(tmp_path)
    dataset = read_image_folder(tmp_path, image_size=5)
    assert dataset.meta["image_shape"] == (5, 5, 3) and dataset.options["image_size"] == 5
    pixels = load_pixels(dataset, dataset.train)
    assert pixels.shape == (2, 5, 5, 3) and (pixels[1] == (5, 6, 7)).all()
    with pytest.raises(HarnessError, match=r"image_size must be a positive integer or None, got 0"):
        read_image_folder(tmp_path, image_size=0)


def test_image_folder_rejects_empty_class_and_test_only_class(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png")
    _save(tmp_path / "test" / "a" / "2.png")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(HarnessError, match=r"train/empty: class folder holds no images"):
        read_image_folder(tmp_path)
    (tmp_path / "train" / "empty").rmdir()
    _save(tmp_path / "test" / "new" / "3.png")
    with pytest.raises(HarnessError, match=r"test/new: class 'new' is not among train's 1 classes"):
        read_image_folder(tmp_path)


def test_load_pixels_rejects_a_file_resized_after_reading(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png")
    _save(tmp_path / "test" / "a" / "2.png")
    dataset = read_image_folder(tmp_path)
    _save(tmp_path / "test" / "a" / "2.png", size=(7, 7))
    with pytest.raises(HarnessError, match=r"2\.png: image is 7x7, expected 6x4"):
        load_pixels(dataset, dataset.test)


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


def test_generator_is_deterministic_and_reads_back(tmp_path):
    options = {"n_train": 50, "n_test": 20}
    generate_cifar10(tmp_path / "again", **options)
    dataset = load_dataset("cifar10", data_root=tmp_path, generator_options=options, log=lambda _: None)
    files = [p.relative_to(tmp_path / "cifar10") for p in (tmp_path / "cifar10").rglob("*") if p.is_file()]
    expected = {*(f"data_batch_{k}" for k in range(1, 6)), "test_batch", "batches.meta", "README.txt"}
    assert {f.name for f in files} == expected and {f.parent.name for f in files} == {"cifar-10-batches-py"}
    for file in files:
        assert (tmp_path / "cifar10" / file).read_bytes() == (tmp_path / "again" / file).read_bytes(), file

    _check_schema(dataset)
    assert dataset.meta["classes"] == [name for name, *_ in SYNTHETIC_CLASSES]
    assert dataset.meta["class_texts"][1] == SYNTHETIC_CLASSES[1][4]
    assert len(dataset.train) == 50 and len(dataset.test) == 20 and dataset.meta["images"].shape == (70, 32, 32, 3)
    assert (dataset.train["label"].value_counts() == 5).all() and (dataset.test["label"].value_counts() == 2).all()
    assert "synthetic" in (tmp_path / "cifar10" / "cifar-10-batches-py" / "README.txt").read_text().lower()
    assert make_folds(dataset, "stratified", 5, seed=0)["fold"].value_counts().tolist() == [10] * 5
    # train and test come from separate streams: more training images leave the test images as they were
    generate_cifar10(tmp_path / "bigger", n_train=60, n_test=20)
    bigger = read_cifar10(tmp_path / "bigger")
    assert (load_pixels(bigger, bigger.test) == load_pixels(dataset, dataset.test)).all()


def test_generator_rejects_bad_sizes(tmp_path):
    with pytest.raises(HarnessError, match=r"n_train must be an integer >= 5, got 4"):
        generate_cifar10(tmp_path, n_train=4)

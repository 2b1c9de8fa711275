"""Image classification: readers of the standard on-disk formats and the embedded default.

Formats (the data directory)::

    cifar10        cifar-10-batches-py/ (the root or its child): data_batch_1 .. data_batch_5,
                   test_batch, batches.meta; pickled dicts with b"data" uint8 [N, 3072] (per
                   image 1024 red, 1024 green, 1024 blue values, rows of 32), b"labels",
                   and b"label_names" in batches.meta
    cifar100       cifar-100-python/ (the root or its child): train, test, meta; b"fine_labels" /
                   b"coarse_labels", meta b"fine_label_names" / b"coarse_label_names"
    mnist,         train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    fashion_mnist  t10k-labels-idx1-ubyte, each plain or gzipped (name + ".gz"): big-endian idx
                   files, magic 2051 + (N, rows, cols) for images, 2049 + (N,) for labels
    image_folder   train/<class>/**/<image> and test/<class>/**/<image> (.jpg, .jpeg, .png, .bmp,
                   .webp); classes are train's sorted folder names

Every reader returns the same rows: ``train`` and ``test`` with ``id`` (str, unique across both),
``label`` (int64 code in ``[0, C)``; the test split keeps its labels for scoring) and either
``image_index`` (int64 row of ``meta["images"]``, array formats) or ``image_path`` (absolute path,
image folders). ``meta`` holds ``classes`` (names, index = code), ``n_classes``, ``image_shape``
``(H, W, C)`` with C 1 or 3, ``class_texts`` (one sentence per class, for text-image models),
``format`` and, for array formats, ``images`` (uint8 ``[N, H, W, C]``, train rows then test rows).
:func:`load_pixels` returns a frame's pixels for either backing. Pickles are read with an
unpickler that only builds numpy arrays, so a batch file cannot run code.

The embedded default (:func:`generate_cifar10`) writes the CIFAR-10 python format: 10,000 train
(5 batches of 2,000) and 2,000 test 32x32 RGB images, classes balanced, from a fixed seed. A class
is a shape (circle, square, triangle, cross), a fill (solid, striped, dotted) and a colour
composition (``tonal``: the background's hue, only lighter or darker; otherwise a hue at least a
quarter turn away from the background's)::

    solid_circle  striped_circle  dotted_circle  tonal_circle  solid_square
    striped_square  tonal_square  solid_triangle  striped_triangle  solid_cross

Nuisances: every colour is random (background hue, saturation and value; stripes and dots in a
second hue far from the object's), the object's position and size (radius 7.5-11 px; all shapes
have the circle's area, so pixel counts say nothing), its rotation (triangles and crosses any
angle, squares at most 23 degrees, so their straight upright edges stay a cue), the stripes'
angle, period and phase, the dot lattice's period and phase, a background gradient, 1-3 random
strokes and 1-3 blobs behind the object, 0-1 thin strokes over it, and Gaussian pixel noise
(sigma 8 on the 0-255 scale). The classes share one distribution of colours and positions, so
neither the mean colour nor any fixed pixel carries the class.

Measured on the default set (train on train, score test, one CPU thread)::

    class prior                                                        0.100
    LogisticRegression on the mean colour (3 features, standardised)   0.106
    LogisticRegression on raw pixels (standardised), best C of         0.159  (C = 1e-3; train 0.41;
      1e-3, 1e-2, 0.1, 1                                                       C = 1: train 1.00, test 0.12)
    CNN: 3 x (conv 3x3, BatchNorm, ReLU, max-pool), 16/32/64           0.874-0.893  (2 seeds)
      channels, global max-pool, linear; AdamW 3e-3, batch 64,
      random flips, 60 s of training (about 5 epochs)

The CNN's remaining errors are shape confusions among the striped shapes and between the tonal
circle and square; colour composition and fill are learned first.
"""

from __future__ import annotations

import colorsys
import gzip
import pickle
import warnings
import zlib
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw

from harness.data import Dataset, DatasetSpec, register_dataset
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = [
    "load_pixels",
    "decode_image",
    "read_cifar10",
    "read_cifar100",
    "read_mnist",
    "read_fashion_mnist",
    "read_image_folder",
    "generate_cifar10",
    "SYNTHETIC_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode images are decoded in
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # decoded as one channel by default
# Everything a CIFAR batch pickle may reference: numpy arrays, dtypes and scalars, and how protocol-2
# pickles written by Python 3 spell bytes (the codec, and `bytes()` for empty ones).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
}  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------


def load_pixels(dataset: Dataset, frame: pd.DataFrame) -> np.ndarray:
    """Pixels of ``frame``'s rows, uint8 ``[len(frame), H, W, C]`` in frame order.

    Works for both backings of a classification dataset: rows with ``image_index`` index into
    ``meta["images"]``; rows with ``image_path`` are decoded with PIL in mode "L" (C = 1) or
    "RGB" (C = 3) and, when the reader was given ``options["image_size"]``, resized to
    ``meta["image_shape"]``; otherwise a file of another size (changed since it was read) is a
    :class:`HarnessError` naming it.
    """
    height, width, channels = dataset.meta["image_shape"]
    if "image_index" in frame.columns:
        return dataset.meta["images"][frame["image_index"].to_numpy(np.int64)]
    resize = dataset.options.get("image_size") is not None
    pixels = np.empty((len(frame), height, width, channels), dtype=np.uint8)
    for row, path in enumerate(frame["image_path"]):
        pixels[row] = decode_image(Path(path), (height, width, channels), resize)
    return pixels


def decode_image(path: Path, shape: tuple[int, int, int], resize: bool,
                 hint: str = "pass image_size=<pixels> to resize every image to a square") -> np.ndarray:  # fmt: skip
    """One file as uint8 ``[H, W, C]`` (C 1 or 3), resized to ``shape`` if ``resize``; else another
    size is a :class:`HarnessError` naming the file and ending with ``hint``."""
    height, width, channels = shape
    try:
        with Image.open(path) as image:
            image = image.convert(_MODES[channels])
    except (OSError, SyntaxError, ValueError) as exc:
        raise HarnessError(f"{path}: not a decodable image ({_one_line(exc)}).") from exc
    if image.size != (width, height):
        if not resize:
            raise HarnessError(
                f"{path}: image is {image.width}x{image.height}, expected {width}x{height} like the others; {hint}."
            )
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------


def read_cifar10(root: str | Path) -> Dataset:
    """Read the CIFAR-10 python version; bad input is a one-line :class:`HarnessError`.

    ``class_texts`` are "a photo of a <name>." except for the embedded default's class names,
    which get the description of their planted composition (:data:`SYNTHETIC_CLASSES`).

    Args:
        root: ``cifar-10-batches-py/`` or the directory holding it.
    """
    folder = _cifar_folder(Path(root), "cifar-10-batches-py", "batches.meta",
                           "data_batch_1 .. data_batch_5, test_batch and batches.meta")  # fmt: skip
    meta_path = folder / "batches.meta"
    classes = _class_names(_unpickle(meta_path), "label_names", meta_path)
    train = [_cifar_batch(folder / f"data_batch_{k}", "labels", classes, meta_path) for k in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", "labels", classes, meta_path)
    texts = [_SYNTHETIC_TEXTS.get(name) or f"a photo of {_article(name)} {name}." for name in classes]
    return _array_dataset(
        "cifar10", folder, classes, texts, "cifar-10-python",
        np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train]), *test,
    )  # fmt: skip


def read_cifar100(root: str | Path, *, label_mode: str = "fine") -> Dataset:
    """Read the CIFAR-100 python version; bad input is a one-line :class:`HarnessError`.

    Args:
        root: ``cifar-100-python/`` or the directory holding it.
        label_mode: ``"fine"`` (default, 100 classes) or ``"coarse"`` (20 superclasses).
    """
    if label_mode not in ("fine", "coarse"):
        raise HarnessError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}.")
    folder = _cifar_folder(Path(root), "cifar-100-python", "meta", "train, test and meta")
    meta_path = folder / "meta"
    classes = _class_names(_unpickle(meta_path), f"{label_mode}_label_names", meta_path)
    train = _cifar_batch(folder / "train", f"{label_mode}_labels", classes, meta_path)
    test = _cifar_batch(folder / "test", f"{label_mode}_labels", classes, meta_path)
    words = [name.replace("_", " ") for name in classes]  # "aquarium_fish" -> "aquarium fish"
    if label_mode == "fine":
        texts = [f"a photo of {_article(name)} {name}." for name in words]
    else:  # superclass names are plural ("aquatic mammals")
        texts = [f"a photo of {name}." for name in words]
    return _array_dataset("cifar100", folder, classes, texts, "cifar-100-python", *train, *test,
                          options={"label_mode": label_mode})  # fmt: skip


def _cifar_folder(root: Path, name: str, marker: str, files: str) -> Path:
    for folder in (root, root / name):
        if (folder / marker).is_file():
            return folder
    raise HarnessError(f"{root}: neither it nor {root / name} holds {marker}; expected {name}/ with {files}.")


def _unpickle(path: Path):
    if not path.is_file():
        raise HarnessError(f"{path}: file not found.")
    try:
        with open(path, "rb") as file:
            return _BatchUnpickler(file, encoding="bytes").load()
    except Exception as exc:  # unpickling a damaged file raises almost any type
        raise HarnessError(f"{path}: not a readable CIFAR pickle ({_one_line(exc)}).") from exc


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}; a CIFAR pickle holds only numpy arrays")
        return super().find_class(module, name)


def _entry(batch, key: str, path: Path):
    """``batch[key]``, whether the pickle was written with bytes keys (the original) or str keys."""
    if not isinstance(batch, dict):
        raise HarnessError(f"{path}: expected a pickled dict, got {type(batch).__name__}.")
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    present = ", ".join(sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in batch))
    raise HarnessError(f"{path}: no {key!r} entry; entries present: {present or 'none'}.")


def _class_names(meta, key: str, path: Path) -> list[str]:
    names = _entry(meta, key, path)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise HarnessError(f"{path}: {key!r} must be a non-empty list of class names, got {_describe(names)}.")
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: {key!r} holds a class name that is not UTF-8 ({_one_line(exc)}).") from exc


def _cifar_batch(path: Path, key: str, classes: list[str], meta_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as HWC images ``[N, 32, 32, 3]`` and int64 labels, validated."""
    batch = _unpickle(path)
    data = _entry(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise HarnessError(
            f"{path}: 'data' must be a uint8 array [N, 3072] (1024 red, 1024 green, 1024 blue values "
            f"per image), got {_describe(data)}."
        )
    labels = _labels(_entry(batch, key, path), path, key, len(data), len(classes), meta_path)
    # channel-major rows -> [N, 3, 32, 32] -> [N, 32, 32, 3]
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _labels(values, path: Path, key: str, n_images: int, n_classes: int, names_path: Path) -> np.ndarray:
    try:
        labels = np.asarray(values)
    except ValueError as exc:  # ragged nesting
        raise HarnessError(f"{path}: {key!r} must be a list of integer class codes ({_one_line(exc)}).") from exc
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise HarnessError(f"{path}: {key!r} must be a list of integer class codes, got {_describe(values)}.")
    if len(labels) != n_images:
        raise HarnessError(f"{path}: {n_images} images but {len(labels)} labels in {key!r}; expected one per image.")
    if not n_images:
        raise HarnessError(f"{path}: holds no images; every split needs at least one.")
    outside = (labels < 0) | (labels >= n_classes)
    if outside.any():
        raise HarnessError(
            f"{path}: {outside.sum()} labels in {key!r} outside 0..{n_classes - 1} (e.g. {labels[outside][0]}); "
            f"{names_path.name} names {n_classes} classes."
        )
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# MNIST-style idx files
# ----------------------------------------------------------------------------------------------

_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # 0x0803: unsigned bytes, 3 dims; 0x0801: 1 dim


def read_mnist(root: str | Path) -> Dataset:
    """Read MNIST's four idx files (plain or gzipped); bad input is a one-line :class:`HarnessError`.

    Args:
        root: the directory holding the idx files.
    """
    classes = [str(d) for d in range(10)]
    return _read_idx_dataset("mnist", Path(root), classes, [f"a handwritten digit {d}." for d in classes])


def read_fashion_mnist(root: str | Path) -> Dataset:
    """Read Fashion-MNIST's four idx files (plain or gzipped); bad input is a one-line :class:`HarnessError`.

    Args:
        root: the directory holding the idx files.
    """
    texts = [f"a photo of {_article(name)} {name.lower()}." for name in FASHION_MNIST_CLASSES]
    return _read_idx_dataset("fashion_mnist", Path(root), list(FASHION_MNIST_CLASSES), texts)


def _read_idx_dataset(name: str, root: Path, classes: list[str], texts: list[str]) -> Dataset:
    splits = {}
    for split, (images_name, labels_name) in _IDX_SPLITS.items():
        images_path, labels_path = _idx_path(root, images_name), _idx_path(root, labels_name)
        images, labels = _read_idx(images_path, _IMAGES_MAGIC), _read_idx(labels_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise HarnessError(
                f"{images_path}: {len(images)} images but {labels_path.name} holds {len(labels)} labels; "
                "expected one label per image."
            )
        if not len(images):
            raise HarnessError(f"{images_path}: holds no images; every split needs at least one.")
        outside = labels >= len(classes)
        if outside.any():
            raise HarnessError(
                f"{labels_path}: {outside.sum()} labels outside 0..{len(classes) - 1} (e.g. {labels[outside][0]}); "
                f"{name} has {len(classes)} classes."
            )
        splits[split] = images[..., None], labels.astype(np.int64)
    (train_images, _), (test_images, _) = splits.values()
    if train_images.shape[1:] != test_images.shape[1:]:
        raise HarnessError(
            f"{_idx_path(root, _IDX_SPLITS['test'][0])}: images are {test_images.shape[2]}x{test_images.shape[1]}, "
            f"but the training images are {train_images.shape[2]}x{train_images.shape[1]}."
        )
    return _array_dataset(name, root, classes, texts, "idx", *splits["train"], *splits["test"])


def _idx_path(root: Path, name: str) -> Path:
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    every = ", ".join(name for pair in _IDX_SPLITS.values() for name in pair)
    raise HarnessError(f"{root / name}: not found (nor {name}.gz); expected {every} in {root}, each optionally .gz.")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file of unsigned bytes; gzip is recognised by content, not by name."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise HarnessError(f"{path}: not a readable gzip file ({_one_line(exc)}).") from exc
    n_dims = magic & 0xFF
    header = 4 + 4 * n_dims
    what = "images (N, rows, cols)" if magic == _IMAGES_MAGIC else "labels (N)"
    if len(raw) < header:
        raise HarnessError(f"{path}: truncated: {len(raw)} bytes, expected a {header}-byte idx header for {what}.")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise HarnessError(f"{path}: magic number {found}, expected {magic} (idx {what}, unsigned bytes).")
    dims = tuple(int.from_bytes(raw[k : k + 4], "big") for k in range(4, header, 4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "too long"
        raise HarnessError(
            f"{path}: {state}: {len(raw) - header} bytes after the header, expected {expected} "
            f"for dimensions {' x '.join(map(str, dims))}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# ----------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------


def read_image_folder(root: str | Path, *, image_size: int | None = None, channels: int | None = None) -> Dataset:
    """Read a torchvision ImageFolder layout with train/ and test/; bad input is a one-line :class:`HarnessError`.

    Class folders are searched recursively; hidden files and folders (names starting with ".") are
    ignored, other files that are not images are skipped with one warning. A train class folder
    without images, a test class missing from train and (without ``image_size``) images of
    different sizes are errors. Only image headers are read here; :func:`load_pixels` decodes.

    Args:
        root: the directory holding ``train/`` and ``test/``.
        image_size: resize every image to this square size; ``None`` (default) keeps the size,
            which must then be the same for all images.
        channels: 1 (greyscale) or 3 (RGB); ``None`` (default) takes it from the first training
            image's mode. Every image is converted to it when decoded.
    """
    root = Path(root)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, Integral)
                                   or image_size < 1):  # fmt: skip
        raise HarnessError(f"image_size must be a positive integer or None, got {image_size!r}.")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise HarnessError(f"channels must be 1, 3 or None, got {channels!r}.")
    split_dirs = {split: root / split for split in ("train", "test")}
    for directory in split_dirs.values():
        if not directory.is_dir():
            raise HarnessError(
                f"{directory}: not a directory; an image folder needs train/<class>/<image> and "
                f"test/<class>/<image> ({', '.join(IMAGE_SUFFIXES)})."
            )
    classes = _class_folders(split_dirs["train"])
    if not classes:
        raise HarnessError(f"{split_dirs['train']}: no class folders; expected train/<class>/<image>.")
    unknown = [c for c in _class_folders(split_dirs["test"]) if c not in classes]
    if unknown:
        raise HarnessError(
            f"{split_dirs['test'] / unknown[0]}: class {unknown[0]!r} is not among train's {len(classes)} classes "
            f"({len(unknown)} such test folders); every test class needs training images."
        )

    skipped: list[Path] = []
    frames = {}
    for split, directory in split_dirs.items():
        paths, labels = [], []
        for code, name in enumerate(classes):
            found = _images_under(directory / name, skipped)
            if split == "train" and not found:
                raise HarnessError(
                    f"{directory / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                    "add images or remove the folder."
                )
            paths += found
            labels += [code] * len(found)
        skipped += [p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")]
        if not paths:
            raise HarnessError(f"{directory}: no images in any class folder; every split needs at least one.")
        frames[split] = pd.DataFrame({
            "id": [p.relative_to(root).as_posix() for p in paths],
            "label": np.array(labels, dtype=np.int64),
            "image_path": [str(p.absolute()) for p in paths],
        })  # fmt: skip
    if skipped:
        warnings.warn(
            f"{root}: skipped {len(skipped)} files that are not images ({', '.join(IMAGE_SUFFIXES)}) "
            f"inside a class folder; first: {skipped[0]}.",
            UserWarning,
            stacklevel=2,
        )
    shape = _folder_shape([Path(p) for f in frames.values() for p in f["image_path"]], image_size, channels)
    texts = [f"a photo of {_article(name)} {name.replace('_', ' ')}." for name in classes]
    return Dataset(
        name="image_folder",
        task=TaskType.CLASSIFICATION,
        train=frames["train"],
        test=frames["test"],
        id_col="id",
        target_col="label",
        root=root,
        meta={"classes": classes, "n_classes": len(classes), "image_shape": shape, "class_texts": texts,
              "format": "image_folder"},  # fmt: skip
        options={"image_size": image_size, "channels": channels},
    )


def _class_folders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path, skipped: list[Path]) -> list[Path]:
    if not folder.is_dir():
        return []
    images = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(path)
    return images


def _folder_shape(paths: list[Path], image_size: int | None, channels: int | None) -> tuple[int, int, int]:
    """``(H, W, C)`` of the dataset, after checking every header (mixed sizes need ``image_size``)."""
    first = None
    for path in paths:
        try:
            with Image.open(path) as image:
                size, mode = image.size, image.mode
        except (OSError, SyntaxError, ValueError) as exc:
            raise HarnessError(f"{path}: not a decodable image ({_one_line(exc)}).") from exc
        if first is None:
            first = path, size, mode
        elif image_size is None and size != first[1]:
            raise HarnessError(
                f"{path}: image is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}; "
                "pass image_size=<pixels> to resize images of mixed sizes to a square."
            )
    channels = channels or (1 if first[2] in _GREY_MODES else 3)
    height, width = (image_size, image_size) if image_size is not None else (first[1][1], first[1][0])
    return height, width, channels


# ----------------------------------------------------------------------------------------------
# Shared
# ----------------------------------------------------------------------------------------------


def _array_dataset(
    name: str, root: Path, classes: list[str], texts: list[str], fmt: str,
    train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
    options: dict | None = None,
) -> Dataset:  # fmt: skip
    """The standard rows of an array-backed dataset: ids ``train-00042`` / ``test-00007``, ``image_index``."""
    n_train, n_test = len(train_images), len(test_images)
    width = max(5, len(str(max(n_train, n_test) - 1)))
    train = pd.DataFrame({
        "id": [f"train-{i:0{width}d}" for i in range(n_train)],
        "label": train_labels,
        "image_index": np.arange(n_train, dtype=np.int64),
    })  # fmt: skip
    test = pd.DataFrame({
        "id": [f"test-{i:0{width}d}" for i in range(n_test)],
        "label": test_labels,
        "image_index": np.arange(n_train, n_train + n_test, dtype=np.int64),
    })  # fmt: skip
    images = np.concatenate([train_images, test_images])
    return Dataset(
        name=name,
        task=TaskType.CLASSIFICATION,
        train=train,
        test=test,
        id_col="id",
        target_col="label",
        root=root,
        meta={"classes": classes, "n_classes": len(classes), "image_shape": tuple(int(s) for s in images.shape[1:]),
              "images": images, "class_texts": texts, "format": fmt},  # fmt: skip
        options=dict(options or {}),
    )


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Generator of the embedded default
# ----------------------------------------------------------------------------------------------

# name, shape, fill, tonal, description (the dataset's class_texts)
SYNTHETIC_CLASSES = (
    ("solid_circle", "circle", "solid", False, "a solid circle in a hue that contrasts with the background."),
    ("striped_circle", "circle", "striped", False, "a circle filled with stripes of two contrasting hues."),
    ("dotted_circle", "circle", "dotted", False, "a circle filled with a grid of dots in a contrasting hue."),
    ("tonal_circle", "circle", "solid", True, "a solid circle in the background's own hue, only lighter or darker."),
    ("solid_square", "square", "solid", False, "a solid square in a hue that contrasts with the background."),
    ("striped_square", "square", "striped", False, "a square filled with stripes of two contrasting hues."),
    ("tonal_square", "square", "solid", True, "a solid square in the background's own hue, only lighter or darker."),
    ("solid_triangle", "triangle", "solid", False, "a solid triangle in a hue that contrasts with the background."),
    ("striped_triangle", "triangle", "striped", False, "a triangle filled with stripes of two contrasting hues."),
    ("solid_cross", "cross", "solid", False, "a solid plus-shaped cross in a hue that contrasts with the background."),
)  # fmt: skip
_SYNTHETIC_TEXTS = {name: text for name, *_, text in SYNTHETIC_CLASSES}
_SIZE = 32  # output side, pixels
_SUPERSAMPLE = 2  # drawn at 2x and box-averaged, so edges are anti-aliased
_RADIUS = (7.5, 11.0)  # object radius range, output pixels
_NOISE = 8.0  # Gaussian pixel noise, sigma on the 0-255 scale
_BATCHES = 5


def _equal_area(points: list[tuple[float, float]]) -> np.ndarray:
    """A polygon outline scaled to the unit circle's area (pi), so size says nothing about shape."""
    x, y = np.array(points, dtype=float).T
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return np.stack([x, y], 1) * np.sqrt(np.pi / area)


_ANGLES = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
_ARM, _HALF_WIDTH = 1.25, 0.38  # cross proportions before scaling
# largest rotation of each shape, radians: squares tilt at most 23 degrees, so that their straight
# horizontal and vertical edges set them apart from the rotated triangles and crosses
_ROTATION = {"circle": 0.0, "square": 0.4, "triangle": np.pi, "cross": np.pi}
_OUTLINES = {  # polygons around the origin, drawn at a random rotation and radius
    "square": _equal_area([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "triangle": _equal_area(list(zip(np.cos(_ANGLES), np.sin(_ANGLES)))),
    "cross": _equal_area([
        (-_HALF_WIDTH, -_ARM), (_HALF_WIDTH, -_ARM), (_HALF_WIDTH, -_HALF_WIDTH), (_ARM, -_HALF_WIDTH),
        (_ARM, _HALF_WIDTH), (_HALF_WIDTH, _HALF_WIDTH), (_HALF_WIDTH, _ARM), (-_HALF_WIDTH, _ARM),
        (-_HALF_WIDTH, _HALF_WIDTH), (-_ARM, _HALF_WIDTH), (-_ARM, -_HALF_WIDTH), (-_HALF_WIDTH, -_HALF_WIDTH),
    ]),
}  # fmt: skip
# centres of the supersampled canvas' pixels, in output pixels from the image centre
_AXIS = (np.arange(_SIZE * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - _SIZE / 2
_CANVAS_Y, _CANVAS_X = np.meshgrid(_AXIS, _AXIS, indexing="ij")


def generate_cifar10(root: str | Path, *, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> None:
    """Write the synthetic shapes set of the module docstring in the CIFAR-10 python format.

    Writes ``root/cifar-10-batches-py/`` (five training batches of about ``n_train / 5`` images,
    ``test_batch``, ``batches.meta`` with the class names, a ``README.txt``). Classes are balanced
    within each split; train and test are drawn from separate streams, so ``n_train`` does not
    change the test images. The same arguments give byte-identical files.

    Args:
        root: directory to write into (created).
        n_train: training images (default 10,000), at least 5.
        n_test: test images (default 2,000), at least 1.
        seed: seeds every draw (default 0).
    """
    for name, value, least in (("n_train", n_train, _BATCHES), ("n_test", n_test, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise HarnessError(f"{name} must be an integer >= {least}, got {value!r}.")
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [name.encode() for name, *_ in SYNTHETIC_CLASSES]
    per_batch = -(-n_train // _BATCHES)
    _write_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    train_images, train_labels = _draw_split(np.random.default_rng([seed, 0]), n_train)
    test_images, test_labels = _draw_split(np.random.default_rng([seed, 1]), n_test)
    starts = np.linspace(0, n_train, _BATCHES + 1).round().astype(int)
    for k in range(_BATCHES):
        rows = slice(starts[k], starts[k + 1])
        _write_batch(folder / f"data_batch_{k + 1}", f"training batch {k + 1} of {_BATCHES}",
                     train_images[rows], train_labels[rows], starts[k])  # fmt: skip
    _write_batch(folder / "test_batch", "testing batch 1 of 1", test_images, test_labels, 0)
    (folder / "README.txt").write_text(_readme(n_train, n_test, seed), encoding="utf-8")


def _draw_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images with balanced, shuffled labels; noise is added in blocks, as one draw per block."""
    labels = rng.permutation(np.arange(n) % len(SYNTHETIC_CLASSES))
    images = np.stack([_render(_Uniforms(rng), *SYNTHETIC_CLASSES[code][1:4]) for code in labels])
    for block in range(0, n, 1024):
        clean = images[block : block + 1024]
        noisy = clean + _NOISE * rng.standard_normal(clean.shape, dtype=np.float32)
        images[block : block + 1024] = np.clip(np.round(noisy), 0, 255)
    return images, labels.astype(np.int64)


def _write_batch(path: Path, label: str, images: np.ndarray, labels: np.ndarray, first: int) -> None:
    names = [SYNTHETIC_CLASSES[code][0] for code in labels]
    _write_pickle(path, {
        b"batch_label": label.encode(),
        b"labels": [int(code) for code in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072),
        b"filenames": [f"{name}_s_{first + i:06d}.png".encode() for i, name in enumerate(names)],
    })  # fmt: skip


def _write_pickle(path: Path, value: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(value, file, protocol=4)


class _Uniforms:
    """One image's random numbers, drawn as one block: numpy's per-call cost would dominate otherwise."""

    def __init__(self, rng: np.random.Generator, size: int = 96):  # an image uses at most 90
        self._values = iter(rng.random(size).tolist())

    def __call__(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * next(self._values)

    def integer(self, low: int, high: int) -> int:
        """In ``[low, high)``."""
        return low + int((high - low) * next(self._values))

    def colour(self) -> tuple[int, int, int]:
        return self.integer(0, 256), self.integer(0, 256), self.integer(0, 256)


def _render(u: _Uniforms, shape: str, fill: str, tonal: bool) -> np.ndarray:
    """One noiseless image: gradient background, clutter, the class's object, clutter over it."""
    s, n = _SUPERSAMPLE, _SIZE * _SUPERSAMPLE
    # background: a gradient between two nearby colours
    hue, saturation, value = u(), u(0.45, 0.9), u(0.35, 0.9)
    start = _rgb((hue, saturation, value))
    end = tuple(min(255, max(0, c + round(u(-30, 30)))) for c in start)
    direction = u(0, 2 * np.pi)
    ramp = np.clip(0.5 + (np.cos(direction) * _CANVAS_X + np.sin(direction) * _CANVAS_Y) / _SIZE, 0, 1)
    ramp = Image.fromarray(np.round(255 * ramp).astype(np.uint8), "L")
    image = Image.composite(Image.new("RGB", (n, n), end), Image.new("RGB", (n, n), start), ramp)
    draw = ImageDraw.Draw(image)
    for _ in range(u.integer(1, 4)):
        _stroke(u, draw, width=u(0.6, 1.2))
    for _ in range(u.integer(1, 4)):
        r, x, y = u(1.0, 2.2) * s, u(0, n), u(0, n)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=u.colour())

    # the object: its shape as a mask, painted in its colour, then the fill's second colour
    radius = u(*_RADIUS)
    centre = np.array([u(radius, _SIZE - radius), u(radius, _SIZE - radius)])
    angle = u(-_ROTATION[shape], _ROTATION[shape])
    if tonal:
        shift = u(0.25, 0.4)  # the background value is 0.35-0.9, so one direction always stays in [0.2, 1]
        lighter = value + shift <= 1 and (value - shift < 0.2 or u() < 0.5)
        colour = (hue + u(-0.02, 0.02), min(1.0, max(0.0, saturation + u(-0.1, 0.1))),
                  value + shift if lighter else value - shift)  # fmt: skip
    else:
        colour = (hue + u(0.25, 0.75), u(0.5, 1.0), u(0.2, 1.0))
    mask = Image.new("L", (n, n))
    if shape == "circle":
        (x, y), r = centre * s, radius * s
        ImageDraw.Draw(mask).ellipse((x - r, y - r, x + r, y + r), fill=255)
    else:
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        outline = (_OUTLINES[shape] @ rotation.T * radius + centre) * s
        ImageDraw.Draw(mask).polygon([tuple(p) for p in outline.tolist()], fill=255)
    image.paste(_rgb(colour), (0, 0), mask)
    if fill != "solid":
        second = (colour[0] + u(0.3, 0.7), u(0.5, 1.0), u(0.35, 1.0))
        image.paste(_rgb(second), (0, 0), ImageChops.multiply(mask, _pattern(u, fill)))
    for _ in range(u.integer(0, 2)):
        _stroke(u, draw, width=u(0.5, 0.8))
    return np.asarray(image.reduce(s))


def _pattern(u: _Uniforms, fill: str) -> Image.Image:
    """A canvas-sized mask of stripes (any angle) or of a square lattice of dots (radius 0.3 periods)."""
    if fill == "striped":
        angle, period, phase = u(0, np.pi), u(3.0, 4.5), u()
        marked = ((np.cos(angle) * _CANVAS_X + np.sin(angle) * _CANVAS_Y) / period + phase) % 1 < 0.5
    else:  # an outer sum of 1-D distances: cheap, so the lattice stays axis-aligned
        period, phase_x, phase_y = u(3.2, 4.5), u(), u()
        dx, dy = (_AXIS / period + phase_x) % 1 - 0.5, (_AXIS / period + phase_y) % 1 - 0.5
        marked = dy[:, None] ** 2 + dx[None, :] ** 2 < 0.3**2
    return Image.fromarray(marked.astype(np.uint8) * 255, "L")


def _stroke(u: _Uniforms, draw: ImageDraw.ImageDraw, width: float) -> None:
    s = _SUPERSAMPLE
    x, y, length, direction = u(0, _SIZE), u(0, _SIZE), u(6, 16), u(0, 2 * np.pi)
    end = (x + length * np.cos(direction), y + length * np.sin(direction))
    draw.line((x * s, y * s, end[0] * s, end[1] * s), fill=u.colour(), width=max(1, round(width * s)))


def _rgb(hsv: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hsv[0] % 1.0, *hsv[1:]))


def _readme(n_train: int, n_test: int, seed: int) -> str:
    lines = "\n".join(f"  {code}  {name:<17} {text}" for code, (name, *_, text) in enumerate(SYNTHETIC_CLASSES))
    return f"""Synthetic stand-in for CIFAR-10 (python version), written by
harness.data.images.generate_cifar10 (n_train={n_train}, n_test={n_test}, seed={seed}).
These are NOT CIFAR-10 photographs: 32x32 RGB drawings of one shape per image.

Files as in cifar-10-batches-py: data_batch_1..5 and test_batch (pickled dicts: b"data" uint8
[N, 3072], 1024 red, 1024 green, 1024 blue values per image; b"labels"; b"filenames";
b"batch_label") and batches.meta (b"label_names").

Classes (shape, fill, colour composition):
{lines}

Nuisances: random colours, position, size, rotation (squares at most 23 degrees), stripe angle,
stripe and dot period and phase, background gradient, random strokes and blobs behind and over
the object, Gaussian pixel noise.
"""


register_dataset(
    DatasetSpec(
        name="cifar10",
        task=TaskType.CLASSIFICATION,
        reader=read_cifar10,
        generator=generate_cifar10,
        fold_scheme="stratified",
        metric="accuracy",
        description="CIFAR-10 (python version) image classification; the embedded default is a synthetic "
        "10-class shapes set in that format (accuracy).",
    )
)
register_dataset(
    DatasetSpec(
        name="cifar100",
        task=TaskType.CLASSIFICATION,
        reader=read_cifar100,
        generator=None,
        fold_scheme="stratified",
        metric="accuracy",
        description="CIFAR-100 (python version), fine or coarse labels (accuracy).",
    )
)
register_dataset(
    DatasetSpec(
        name="mnist",
        task=TaskType.CLASSIFICATION,
        reader=read_mnist,
        generator=None,
        fold_scheme="stratified",
        metric="accuracy",
        description="MNIST handwritten digits from the idx files (accuracy).",
    )
)
register_dataset(
    DatasetSpec(
        name="fashion_mnist",
        task=TaskType.CLASSIFICATION,
        reader=read_fashion_mnist,
        generator=None,
        fold_scheme="stratified",
        metric="accuracy",
        description="Fashion-MNIST clothing images from the idx files (accuracy).",
    )
)
register_dataset(
    DatasetSpec(
        name="image_folder",
        task=TaskType.CLASSIFICATION,
        reader=read_image_folder,
        generator=None,
        fold_scheme="stratified",
        metric="accuracy",
        description="Any train/<class>/ + test/<class>/ image folder (ImageFolder layout) (accuracy).",
    )
)

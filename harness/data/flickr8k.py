"""Flickr8k image–text retrieval: reader of the formats users have and generator of the embedded default.

Formats (the data directory)::

    Flicker8k_Dataset/<image>.jpg    the images (the original release's spelling; Flickr8k_Dataset/
    or Images/<image>.jpg            and Kaggle's Images/ are accepted too, in that order)
    Flickr8k.token.txt               <image>#<k> <TAB> <caption>, k = 0..4 per image
    or captions.txt                  CSV with header image,caption (Kaggle; quoted captions)
    Flickr_8k.trainImages.txt        one image name per line (optional, with the dev and test files)
    Flickr_8k.devImages.txt
    Flickr_8k.testImages.txt

Text files are looked up in the directory, then in ``Flickr8k_text/``; when both caption files
exist the token file is read (``meta["format"]`` names the one read). With split files,
``train`` = trainImages ∪ devImages (the harness does its own K-fold on train) and ``test`` =
testImages; without them the images are split by a hash of their name (:func:`read_flickr8k`).

:func:`read_flickr8k` returns one row per IMAGE: ``id`` (the file name), ``image_path``
(absolute), ``captions`` (list of str, file order) and ``caption_ids`` (``<image>#<k>``), so
folds over rows never separate an image from its captions.

The embedded default (:func:`generate_flickr8k`) writes the original layout with 2,000 synthetic
64×64 images (1,400 train / 200 dev / 400 test) and a planted signal that only reading the
words can match:

* scene: one group of 1–3 identical objects at a location (left, right, top, bottom, centre;
  about 18 % of images), or two groups side by side or one above the other (1+1 objects in half
  of them, 2+1 or 1+2 in a quarter each). A group has a shape (circle, square, triangle, star, diamond, cross, ring), a colour
  (red, green, blue, yellow, orange, purple, pink, white), a count and a size (small: 15 %,
  large: 26 % of the side), drawn uniformly; two groups differ in shape or colour. The
  background is a muted gradient with faint lines and specks; positions, sizes, rotations and
  colours jitter. A description already taken is redrawn, so no two images share one.
* twins: with probability 0.4 an image is a minimal edit of the one before (553 of 2,000; 90 in
  test): for two groups the groups change places, exchange colours or shapes, or change counts,
  which leaves a caption's bag of words (nearly) as it was; a twin shares its original's split.
* captions: five different templates per image (word order, "left of" / "to the right of",
  "there are", "on the left, …; on the right, …", synonyms such as disc, rhombus, big, tiny,
  articles, colour before or after the noun), ending in " ." as Flickr8k's. Every caption names
  each group's count, colour and shape and the relation; a group's size is named in half of the
  captions, a single group's location in 5 of 8 templates.

Measured on the default's test split (400 images, 2,000 captions), Recall@1/5/10 in %, rsum as
the metric engine reports it (sum of the six recalls as fractions, at most 6):

============================================  ==================  ==================  =====
scores                                        image → text        text → image        rsum
============================================  ==================  ==================  =====
random (exact; 200 simulations agree)         0.25 / 1.25 / 2.48  0.25 / 1.25 / 2.50  0.080
oracle (:func:`oracle_scores`)                98.3 / 100 / 100    98.9 / 100 / 100    5.97
oracle ignoring which word binds to which     80.1 / 99.3 / 100   80.6 / 100 / 100    5.60
oracle ignoring colour words                  64.0 / 97.4 / 99.8  69.6 / 99.7 / 100   5.30
oracle ignoring shape words                   70.0 / 98.1 / 99.9  74.6 / 99.8 / 100   5.42
oracle ignoring count words                   90.1 / 99.9 / 100   91.0 / 100 / 100    5.81
oracle ignoring the relation's order          90.2 / 99.9 / 100   91.0 / 100 / 100    5.81
============================================  ==================  ==================  =====

Random: text → image R@K = K / 400, image → text 1 − C(1995, K) / C(2000, K). The oracle sees
each image's scene and reads what each caption names; a caption that omits sizes or the
location can fit several images, whose tie it breaks at random (the table gives expectations
over tie-breaks). The "ignoring" rows are the same oracle blind to those words, i.e. the ceiling
of a model that does not read them; "which word binds to which" is a bag of words (which
colours, shapes and counts occur, not which group has them or where it is). A 5-fold validation
fold of the 1,600 training images (320 images) gives random rsum 0.100 and oracle 5.96–5.97.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import math
import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from harness.data import Dataset, DatasetSpec, register_dataset
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = ["read_flickr8k", "generate_flickr8k", "oracle_scores", "IMAGE_DIRS", "SPLIT_FILES"]

IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")  # searched in this order
TEXT_DIRS = (".", "Flickr8k_text")  # where caption and split files are looked up, in this order
TOKEN_FILE, CSV_FILE = "Flickr8k.token.txt", "captions.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt",
}  # fmt: skip
DEFAULT_IMAGE_SIZE = 224
STANDARD_TEST_FRACTION = 1000 / 8091  # the standard test split's share of the 8,091 images
ON_MISSING_IMAGE = ("warn", "error")

# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


def read_flickr8k(
    root: str | Path,
    *,
    image_size: int | None = None,
    test_fraction: float = STANDARD_TEST_FRACTION,
    on_missing_image: str = "warn",
) -> Dataset:
    """Read a Flickr8k directory (module docstring) as one row per image; bad input is a :class:`HarnessError`.

    Captions naming an image whose file does not exist are dropped with their row, and captioned
    images listed in no split file are left out: both are counted in one warning (an error when
    no listed image exists at all). ``meta`` holds ``image_shape`` ``(S, S, 3)``, ``n_captions``,
    ``format`` (the caption file read), ``splits`` (``"files"`` or ``"hash"``) and ``image_dir``.

    Args:
        root: the data directory.
        image_size: side of the square models resize images to; ``None`` (default): 224, or the
            shorter side of the first training image when that is smaller, so small images (the
            embedded default's 64×64) are not upsampled. Part of the fingerprint (as is
            ``test_fraction`` when it is used).
        test_fraction: without split files, the share of images put in ``test`` by a hash of
            their name (default 1000 / 8091 ≈ 0.124, the standard test split's share).
        on_missing_image: ``"warn"`` (default) drops captions of missing image files and warns
            once; ``"error"`` refuses them.
    """
    root = Path(root)
    _check_reader_args(image_size, test_fraction, on_missing_image)
    if not root.is_dir():
        raise HarnessError(f"Data directory {str(root)!r} does not exist.")
    image_dir = _find_image_dir(root)
    caption_path = _find_text(root, TOKEN_FILE) or _find_text(root, CSV_FILE)
    if caption_path is None:
        raise HarnessError(
            f"{root}: no caption file; expected {TOKEN_FILE} or {CSV_FILE} in it or in {TEXT_DIRS[1]}/."
        )
    captions = _read_token_file(caption_path) if caption_path.name == TOKEN_FILE else _read_captions_csv(caption_path)

    # splits: the files when there are any, else a hash of the name
    notes: list[str] = []
    split_paths = {role: _find_text(root, name) for role, name in SPLIT_FILES.items()}
    if any(split_paths.values()):
        split_of = _read_splits(split_paths, captions, caption_path, notes)
        source = "files"
    else:
        split_of = {name: "test" if _hash_unit(name) < test_fraction else "train" for name in captions}
        source = "hash"

    # image files: rows whose image is missing are dropped
    present = {p.name for p in (root / image_dir).iterdir()}
    listed = [name for name in captions if name in split_of]
    missing = [name for name in listed if name not in present]
    if len(missing) == len(listed):
        raise HarnessError(
            f"{root / image_dir}: none of the {len(listed)} images named in {caption_path.name} exists "
            f"(e.g. {missing[0]!r}); is this the Flickr8k image folder?"
        )
    if missing:
        n_dropped = sum(len(captions[name]) for name in missing)
        what = (f"{n_dropped} captions of {len(missing)} images whose file is not in {image_dir}/ "
                f"(e.g. {missing[0]!r})")  # fmt: skip
        if on_missing_image == "error":
            raise HarnessError(
                f"{caption_path}: {what}; on_missing_image='warn' (config data.options.on_missing_image=warn) "
                "drops them instead."
            )
        notes.insert(0, f"dropped {what}")
    missing = set(missing)
    base = (root / image_dir).absolute()
    frames = {}
    for role in ("train", "test"):
        names = [name for name in listed if split_of[name] == role and name not in missing]
        if not names and source == "hash":
            raise HarnessError(
                f"{root}: the name-hash split with test_fraction={test_fraction:.4g} leaves no {role} images; "
                f"add the split files {', '.join(SPLIT_FILES.values())} or change test_fraction."
            )
        if not names:
            raise HarnessError(f"{root}: every {role} image listed in the split files is missing from {image_dir}/.")
        frames[role] = pd.DataFrame({
            "id": names,
            "image_path": [str(base / name) for name in names],
            "captions": _object_column([[text for _, text in captions[name]] for name in names]),
            "caption_ids": _object_column([[cid for cid, _ in captions[name]] for name in names]),
        })  # fmt: skip
    if source == "hash":
        notes.append(
            f"no split files ({', '.join(SPLIT_FILES.values())}), so images are split by a hash of their name: "
            f"{len(frames['train'])} train, {len(frames['test'])} test (test_fraction={test_fraction:.4g})"
        )
    if notes:
        warnings.warn(f"{root}: {'; '.join(notes)}.", UserWarning, stacklevel=2)

    side = image_size if image_size is not None else _default_size(Path(frames["train"]["image_path"].iloc[0]))
    options = {"image_size": int(side), **({"test_fraction": float(test_fraction)} if source == "hash" else {})}
    return Dataset(
        name="flickr8k",
        task=TaskType.RETRIEVAL,
        train=frames["train"],
        test=frames["test"],
        id_col="id",
        target_col="captions",
        root=root,
        group_col=None,
        meta={
            "image_shape": (int(side), int(side), 3),
            "n_captions": int(sum(frame["captions"].map(len).sum() for frame in frames.values())),
            "format": caption_path.name,
            "splits": source,
            "image_dir": image_dir,
        },
        media_cols=("image_path",),
        options=options,
    )


def _check_reader_args(image_size, test_fraction, on_missing_image) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size < 8
    ):
        raise HarnessError(f"image_size must be an integer >= 8 (pixels) or None, got {image_size!r}.")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real) or not 0 < test_fraction < 1:
        raise HarnessError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}.")
    if on_missing_image not in ON_MISSING_IMAGE:
        raise HarnessError(
            f"on_missing_image must be one of {', '.join(map(repr, ON_MISSING_IMAGE))}, got {on_missing_image!r}."
        )


def _find_image_dir(root: Path) -> str:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return name
    raise HarnessError(f"{root}: no image folder; expected one of {', '.join(f'{d}/' for d in IMAGE_DIRS)}.")


def _find_text(root: Path, name: str) -> Path | None:
    return next((root / d / name for d in TEXT_DIRS if (root / d / name).is_file()), None)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not utf-8 text ({_one_line(exc)}).") from exc


def _read_token_file(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Image name → ``[(caption id, caption), ...]`` in file order, validated line by line."""
    captions: dict[str, list[tuple[str, str]]] = {}
    seen: dict[str, int] = {}
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        key, tab, text = line.partition("\t")
        name, hash_sign, k = key.strip().rpartition("#")
        if not tab or not hash_sign or not name or not k.isdigit():
            raise HarnessError(f"{path}, line {n}: expected '<image>#<k><TAB><caption>', got {_clip(line)!r}.")
        if not text.strip():
            raise HarnessError(f"{path}, line {n}: caption {key.strip()!r} is empty.")
        caption_id = f"{name}#{int(k)}"
        if caption_id in seen:
            raise HarnessError(f"{path}, line {n}: caption id {caption_id!r} repeats line {seen[caption_id]}.")
        seen[caption_id] = n
        captions.setdefault(name, []).append((caption_id, text.strip()))
    if not captions:
        raise HarnessError(f"{path}: no captions; expected one line '<image>#<k><TAB><caption>' per caption.")
    return captions


def _read_captions_csv(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Image name → ``[(caption id, caption), ...]`` of a ``image,caption`` CSV; ids count from 0 per image."""
    reader = csv.reader(io.StringIO("\n".join(_read_lines(path))))
    try:
        header = [c.strip().lower() for c in next(reader, [])]
        if "image" not in header or "caption" not in header:
            raise HarnessError(f"{path}, line 1: expected the header 'image,caption', got {','.join(header)!r}.")
        image_at, caption_at = header.index("image"), header.index("caption")
        captions: dict[str, list[tuple[str, str]]] = {}
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise HarnessError(
                    f"{path}, line {reader.line_num}: expected {len(header)} fields ({','.join(header)}), got "
                    f"{len(row)}; quote captions that contain commas."
                )
            name, text = row[image_at].strip(), row[caption_at].strip()
            if not name or not text:
                raise HarnessError(f"{path}, line {reader.line_num}: empty {'image' if not name else 'caption'}.")
            own = captions.setdefault(name, [])
            own.append((f"{name}#{len(own)}", text))
    except csv.Error as exc:
        raise HarnessError(f"{path}, line {reader.line_num}: not readable CSV ({_one_line(exc)}).") from exc
    if not captions:
        raise HarnessError(f"{path}: no captions; expected a header 'image,caption' and one row per caption.")
    return captions


def _read_splits(paths: dict[str, Path | None], captions: dict, caption_path: Path, notes: list[str]) -> dict[str, str]:
    """Image name → ``"train"`` (train ∪ dev) or ``"test"``; errors name the split file and line."""
    found = [p for p in paths.values() if p is not None]
    for role in ("train", "test"):
        if paths[role] is None:
            raise HarnessError(
                f"{found[0].parent}: found {', '.join(p.name for p in found)} but not {SPLIT_FILES[role]}; "
                "with split files, both the train and the test list are needed (dev is optional)."
            )
    where: dict[str, tuple[Path, int]] = {}
    split_of: dict[str, str] = {}
    n_repeated = 0
    for role, path in paths.items():
        if path is None:
            continue
        lines = [(n, line.strip()) for n, line in enumerate(_read_lines(path), 1) if line.strip()]
        if not lines:
            raise HarnessError(f"{path}: no image names; a split file lists one image file name per line.")
        for n, name in lines:
            if name in where:
                other, m = where[name]
                if other == path:
                    n_repeated += 1
                    continue
                raise HarnessError(
                    f"{path}, line {n}: image {name!r} is also in {other.name} (line {m}); "
                    "an image belongs to one split."
                )
            if name not in captions:
                raise HarnessError(f"{path}, line {n}: image {name!r} has no captions in {caption_path.name}.")
            where[name] = (path, n)
            split_of[name] = "test" if role == "test" else "train"
    unlisted = [name for name in captions if name not in split_of]
    if unlisted:
        notes.append(f"left out {len(unlisted)} captioned images listed in no split file (e.g. {unlisted[0]!r})")
    if n_repeated:
        notes.append(f"merged {n_repeated} repeated names within split files")
    return split_of


def _hash_unit(name: str) -> float:
    """A number in [0, 1) fixed by the image name alone, so the split never depends on file order."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def _default_size(path: Path) -> int:
    try:
        with Image.open(path) as image:
            return min(DEFAULT_IMAGE_SIZE, *image.size)
    except (OSError, SyntaxError, ValueError) as exc:
        raise HarnessError(f"{path}: not a decodable image ({_one_line(exc)}).") from exc


def _object_column(values: list) -> pd.Series:
    column = pd.Series([None] * len(values), dtype=object)
    column[:] = values
    return column


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Generator of the embedded default
# ----------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 200), "pink": (245, 130, 190), "white": (245, 245, 245),
}  # fmt: skip
LOCATIONS = ("left", "right", "top", "bottom", "centre")
SINGLE_SHARE = 0.2  # share of images with one group (the rest have two)
DIAMETER = {"small": 0.15, "large": 0.26}  # of the image side
SPLIT_SHARES = {"dev": 0.1, "test": 0.2}  # of n_images; the rest is train
_SUPERSAMPLE = 4  # drawn at 4x and downsampled, for anti-aliased edges
# Unit outlines (radius 1, y down) of the polygon shapes.
_OUTLINES = {
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "triangle": [(0.0, -0.95), (0.95, 0.7), (-0.95, 0.7)],
    "diamond": [(0.0, -1.0), (0.65, 0.0), (0.0, 1.0), (-0.65, 0.0)],
    "star": [((1.0 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5),
              -(1.0 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5)) for k in range(10)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
}  # fmt: skip
# Where groups sit, as (x0, y0, x1, y1) fractions of the image: a single group's location, or
# the first / second group of a pair side by side ("h") or one above the other ("v").
_REGIONS = {
    "left": (0.03, 0.03, 0.47, 0.97), "right": (0.53, 0.03, 0.97, 0.97),
    "top": (0.03, 0.03, 0.97, 0.47), "bottom": (0.03, 0.53, 0.97, 0.97), "centre": (0.15, 0.15, 0.85, 0.85),
}  # fmt: skip
_PAIR_REGIONS = {"h": ("left", "right"), "v": ("top", "bottom")}
_MAX_SHIFT = 0.06  # largest jitter of an object's centre, so a group stays where its caption says

# Caption vocabulary: latent value → the words that may express it.
_COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_SHAPE_WORDS = {
    "circle": ("circle", "disc"), "square": ("square",), "triangle": ("triangle",), "star": ("star",),
    "diamond": ("diamond", "rhombus"), "cross": ("cross", "plus sign"), "ring": ("ring", "hoop"),
}  # fmt: skip
_COLOUR_WORDS = {colour: (colour,) for colour in COLOURS} | {"purple": ("purple", "violet")}
_RELATION_WORDS = {  # first group <rel> second / second <inv> first
    "h": (("left of", "to the left of", "on the left of"), ("right of", "to the right of")),
    "v": (("above", "over"), ("below", "under", "beneath")),
}
_SIDE_WORDS = {"h": (("on the left", "to the left"), ("on the right", "to the right")),
               "v": (("at the top", "up top"), ("at the bottom", "down below"))}  # fmt: skip
_LOCATION_WORDS = {
    "left": ("on the left", "on the left side", "at the left"), "right": ("on the right", "on the right side",
    "at the right"), "top": ("at the top", "near the top", "in the upper half"), "bottom": ("at the bottom",
    "near the bottom", "in the lower half"), "centre": ("in the middle", "in the centre", "in the center"),
}  # fmt: skip
_PAIR_TEMPLATES = (
    "{A} {rel} {B}", "{A} {be_a} {rel} {B}", "there {be_a} {A} {rel} {B}", "{B} {inv} {A}",
    "{B} {be_b} {inv} {A}", "a picture of {A} {rel} {B}", "an image showing {B} {inv} {A}",
    "{side_a}, {A}; {side_b}, {B}", "{side_b} {be_b} {B} and {side_a} {A}",
)  # fmt: skip
_SINGLE_TEMPLATES = (
    "{A} {loc}", "{A} {be_a} {loc}", "there {be_a} {A} {loc}", "{loc}, {A}", "{loc} {be_a} {A}",
    "a picture of {A} {loc}", "{A}", "an image of {A}",
)  # fmt: skip
CAPTIONS_PER_IMAGE = 5
_REDRAWS = 10  # a scene whose description is taken is redrawn up to this often, so few images share one
TWIN_SHARE = 0.4  # probability that an image is a twin (a minimal edit) of the one before, when that is no twin
SIZE_MENTION = 0.5  # probability that a caption names a group's size
# Latent fields of a scene (truth/scenes.csv) and of what a caption names (truth/mentions.csv; "" = not named).
FIELDS = ("groups", "axis", "location", *(f"{a}_{g}" for g in (1, 2) for a in ("shape", "colour", "count", "size")))


class _Group(NamedTuple):
    shape: str
    colour: str
    count: int
    size: str


class _Scene(NamedTuple):
    groups: tuple[_Group, ...]  # one, or two (first = left / top)
    axis: str  # "h" or "v" for two groups, "-" for one
    location: str  # a single group's location, "-" for two


def generate_flickr8k(root: str | Path, seed: int = 0, *, n_images: int = 2000, image_size: int = 64) -> None:
    """Write a deterministic synthetic Flickr8k directory in the original layout (module docstring).

    Files: ``Flicker8k_Dataset/<image>.jpg`` (RGB JPEG, quality 95), ``Flickr8k.token.txt`` (five
    captions per image), ``Flickr_8k.{train,dev,test}Images.txt`` (70 / 10 / 20 % of the images),
    ``README.txt`` (says it is synthetic, the parameters, how many images are twins and how many
    share a description) and ``truth/scenes.csv`` / ``truth/mentions.csv`` (each image's scene and
    the image it is a twin of, and which attributes each caption names; not part of the format,
    read by :func:`oracle_scores`). The same arguments give byte-identical files.

    Args:
        root: directory to write into (created).
        seed: seeds every draw; the embedded default uses 0, whatever a run's seed.
        n_images: number of images (at least 10, so every split has one).
        image_size: side of the square images in pixels.
    """
    for name, value, least in (("n_images", n_images, 10), ("image_size", image_size, 16)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise HarnessError(f"{name} must be an integer >= {least}, got {value!r}.")
    rng = np.random.default_rng(seed)
    numbers = rng.choice(3 * 10**9, size=n_images, replace=False) + 10**9  # 10-digit like the real names
    names = [f"{number}_{rng.bytes(5).hex()}.jpg" for number in numbers]

    root = Path(root)
    (root / IMAGE_DIRS[0]).mkdir(parents=True)
    (root / "truth").mkdir()
    # scenes; a twin is a minimal edit of the image before it and shares its split
    scenes: list[_Scene] = []
    used: set[_Scene] = set()
    units: list[list[int]] = []  # one image, or an image and its twin
    for index in range(n_images):
        twin = index > 0 and len(units[-1]) == 1 and rng.random() < TWIN_SHARE
        scene = _edit_scene(rng, scenes[-1]) if twin else _draw_scene(rng)
        for _ in range(_REDRAWS):
            if scene not in used:
                break
            scene, twin = _draw_scene(rng), False
        scenes.append(scene)
        used.add(scene)
        if twin:
            units[-1].append(index)
        else:
            units.append([index])

    # images, captions and what each caption names
    token_lines, scene_rows, mention_rows = [], [], []
    twin_of = {unit[1]: names[unit[0]] for unit in units if len(unit) == 2}
    for index, (name, scene) in enumerate(zip(names, scenes)):
        _render(rng, scene, image_size).save(root / IMAGE_DIRS[0] / name, "JPEG", quality=95, subsampling=0)
        scene_rows.append({"image": name, **_fields(scene), "twin_of": twin_of.get(index, "")})
        for k, (text, mention) in enumerate(_write_captions(rng, scene)):
            token_lines.append(f"{name}#{k}\t{text}")
            mention_rows.append({"caption_id": f"{name}#{k}", **mention})
    _write_lines(root / TOKEN_FILE, token_lines)

    # splits of whole units, filled test first, then dev
    n_dev, n_test = (max(1, round(share * n_images)) for share in SPLIT_SHARES.values())
    room = {"test": n_test, "dev": n_dev}
    parts: dict[str, list[int]] = {"test": [], "dev": [], "train": []}
    for u in rng.permutation(len(units)):
        role = next((r for r in room if len(parts[r]) + len(units[u]) <= room[r]), "train")
        parts[role] += units[u]
    for role, rows in parts.items():
        _write_lines(root / SPLIT_FILES[role], [names[i] for i in sorted(rows)])
    table = pd.DataFrame(scene_rows)
    table.to_csv(root / "truth" / "scenes.csv", index=False, lineterminator="\n")
    pd.DataFrame(mention_rows).to_csv(root / "truth" / "mentions.csv", index=False, lineterminator="\n")
    shared = int(table.duplicated(list(FIELDS), keep=False).sum())
    sizes = {role: len(rows) for role, rows in parts.items()}
    (root / "README.txt").write_text(_readme(seed, n_images, image_size, sizes, len(twin_of), shared))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8"))


def _draw_scene(rng: np.random.Generator) -> _Scene:
    def group(count: int) -> _Group:
        return _Group(_pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), count, _pick(rng, tuple(DIAMETER)))

    if rng.random() < SINGLE_SHARE:
        return _Scene((group(int(rng.integers(1, 4))),), "-", _pick(rng, LOCATIONS))
    counts = _pick(rng, ((1, 1), (1, 1), (2, 1), (1, 2)))
    first = group(counts[0])
    second = group(counts[1])
    while (second.shape, second.colour) == (first.shape, first.colour):  # two groups must look different
        second = group(counts[1])
    return _Scene((first, second), _pick(rng, ("h", "v")), "-")


def _edit_scene(rng: np.random.Generator, scene: _Scene) -> _Scene:
    """``scene`` with one thing changed; for two groups mostly a change of binding (which group is
    where, which has which colour or shape) that leaves a caption's bag of words as it was."""
    if len(scene.groups) == 1:
        (group,) = scene.groups
        kind = _pick(rng, ("count", "location", "colour", "shape"))
        if kind == "location":
            return scene._replace(location=_pick(rng, tuple(v for v in LOCATIONS if v != scene.location)))
        values = {"count": (1, 2, 3), "colour": tuple(COLOURS), "shape": SHAPES}[kind]
        new = _pick(rng, tuple(v for v in values if v != getattr(group, kind)))
        return scene._replace(groups=(group._replace(**{kind: new}),))
    a, b = scene.groups
    kind = _pick(rng, ("place", "colour", "shape", "count"))
    if kind in ("colour", "shape") and getattr(a, kind) != getattr(b, kind):  # exchange it between the groups
        return scene._replace(groups=(a._replace(**{kind: getattr(b, kind)}), b._replace(**{kind: getattr(a, kind)})))
    if kind == "count":
        counts = _pick(rng, tuple(c for c in ((1, 1), (2, 1), (1, 2)) if c != (a.count, b.count)))
        return scene._replace(groups=(a._replace(count=counts[0]), b._replace(count=counts[1])))
    return scene._replace(groups=(b, a))  # the groups change places


def _pick(rng: np.random.Generator, options: tuple):
    """One of ``options``, uniformly (``rng.choice`` costs more than the rest of a caption)."""
    return options[int(rng.integers(len(options)))]


def _fields(scene: _Scene) -> dict[str, str]:
    """The scene's latent description as text fields (``"-"`` where a field does not apply)."""
    fields = {"groups": str(len(scene.groups)), "axis": scene.axis, "location": scene.location}
    for g in (1, 2):
        group = scene.groups[g - 1] if g <= len(scene.groups) else None
        for attribute in ("shape", "colour", "count", "size"):
            fields[f"{attribute}_{g}"] = str(getattr(group, attribute)) if group else "-"
    return fields


def _write_captions(rng: np.random.Generator, scene: _Scene) -> list[tuple[str, dict[str, str]]]:
    """Five captions from five different templates, each with the fields it names."""
    pair = len(scene.groups) == 2
    templates = _PAIR_TEMPLATES if pair else _SINGLE_TEMPLATES
    out = []
    for t in rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False):
        template = templates[t]
        mention = _fields(scene)
        phrases = []
        for g, group in enumerate(scene.groups, 1):
            with_size = rng.random() < SIZE_MENTION
            if not with_size:
                mention[f"size_{g}"] = ""
            phrases.append(_noun_phrase(rng, group, with_size))
        slots = {"A": phrases[0], "be_a": "is" if scene.groups[0].count == 1 else "are"}
        if pair:
            forward, inverse = _RELATION_WORDS[scene.axis]
            side_a, side_b = _SIDE_WORDS[scene.axis]
            slots.update(B=phrases[1], be_b="is" if scene.groups[1].count == 1 else "are", rel=_pick(rng, forward),
                         inv=_pick(rng, inverse), side_a=_pick(rng, side_a), side_b=_pick(rng, side_b))  # fmt: skip
        else:
            slots["loc"] = _pick(rng, _LOCATION_WORDS[scene.location])
            if "{loc}" not in template:
                mention["location"] = ""
        text = template.format(**slots)
        out.append((f"{text[0].upper()}{text[1:]} .", mention))  # Flickr8k's captions end in " ."
    return out


def _noun_phrase(rng: np.random.Generator, group: _Group, with_size: bool) -> str:
    """E.g. "two small red triangles", "a big disc in violet", "an orange star"."""
    shape = _pick(rng, _SHAPE_WORDS[group.shape])
    if group.count > 1:
        shape += "es" if shape.endswith("s") else "s"
    colour = _pick(rng, _COLOUR_WORDS[group.colour])
    size = [_pick(rng, _SIZE_WORDS[group.size])] if with_size else []
    count = _pick(rng, _COUNT_WORDS[group.count])
    words = [count, *size, shape, "in", colour] if rng.random() < 0.25 else [count, *size, colour, shape]
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _render(rng: np.random.Generator, scene: _Scene, size: int) -> Image.Image:
    """The scene on a muted, lightly cluttered background, drawn at 4x and downsampled."""
    s = size * _SUPERSAMPLE
    hue, saturation, value = rng.uniform(), rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.55)
    ends = [np.array(colorsys.hsv_to_rgb(hue, saturation, v)) * 255 for v in (value + 0.06, value - 0.06)]
    gradient = np.linspace(*ends, s)  # [s, 3]; RGB is linear in the HSV value
    shape = (s, 1, 3) if rng.random() < 0.5 else (1, s, 3)  # top to bottom, or left to right
    image = Image.fromarray(gradient.round().astype(np.uint8).reshape(shape), "RGB").resize((s, s), Image.NEAREST)
    draw = ImageDraw.Draw(image)

    def shade(spread: float) -> tuple[int, int, int]:  # a tone near the background's
        v = min(1.0, max(0.0, value + rng.uniform(-spread, spread)))
        return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, v))

    for _ in range(int(rng.integers(3, 7))):  # faint lines
        draw.line(tuple(rng.uniform(0, s, 4)), fill=shade(0.12), width=_SUPERSAMPLE)
    for x, y in rng.uniform(0, s, (int(rng.integers(8, 20)), 2)):  # specks
        draw.rectangle((x, y, x + _SUPERSAMPLE, y + _SUPERSAMPLE), fill=shade(0.15))

    regions = _PAIR_REGIONS[scene.axis] if len(scene.groups) == 2 else (scene.location,)
    for group, region in zip(scene.groups, regions):
        for x0, y0, x1, y1 in _cells(_REGIONS[region], group.count):
            diameter = DIAMETER[group.size] * rng.uniform(0.9, 1.1)
            centre = []
            for lo, hi in ((x0, x1), (y0, y1)):
                shift = min(_MAX_SHIFT, max(0.0, (hi - lo - diameter) / 2))
                centre.append((lo + hi) / 2 + rng.uniform(-shift, shift))
            colour = np.clip(np.array(COLOURS[group.colour]) + rng.integers(-12, 13, 3), 0, 255)
            rotation = rng.uniform(-0.18, 0.18)  # radians, about 10 degrees
            _draw_shape(draw, group.shape, centre[0] * s, centre[1] * s, diameter / 2 * s, tuple(map(int, colour)),
                        rotation)  # fmt: skip
    return image.reduce(_SUPERSAMPLE)


def _cells(region: tuple[float, float, float, float], n: int) -> list[tuple[float, float, float, float]]:
    """``n`` disjoint boxes inside ``region``, one per object: along its long side, a triangle in a square."""
    x0, y0, x1, y1 = region
    if n == 3 and math.isclose(x1 - x0, y1 - y0):
        xm, ym, quarter = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4
        return [(x0, y0, xm, ym), (xm, y0, x1, ym), (xm - quarter, ym, xm + quarter, y1)]
    if x1 - x0 >= y1 - y0:
        edges = np.linspace(x0, x1, n + 1)
        return [(a, y0, b, y1) for a, b in zip(edges[:-1], edges[1:])]
    edges = np.linspace(y0, y1, n + 1)
    return [(x0, a, x1, b) for a, b in zip(edges[:-1], edges[1:])]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour, rotation: float) -> None:
    if shape in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(1, round(0.32 * r)))
        return
    cos, sin = math.cos(rotation), math.sin(rotation)
    outline = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in _OUTLINES[shape]]
    draw.polygon(outline, fill=colour)


def _readme(seed: int, n_images: int, image_size: int, sizes: dict[str, int], n_twins: int, shared: int) -> str:
    return f"""Synthetic Flickr8k-format data: NOT photographs and NOT the Flickr8k dataset.

Written by harness.data.flickr8k.generate_flickr8k (seed={seed}, n_images={n_images},
image_size={image_size}) as the embedded default of the flickr8k retrieval competition, in the
original release's layout:

  {IMAGE_DIRS[0]}/<image>.jpg   {n_images} images, {image_size}x{image_size} RGB JPEG
  {TOKEN_FILE}            <image>#<k> TAB <caption>, {CAPTIONS_PER_IMAGE} captions per image
  {SPLIT_FILES['train']}     {sizes['train']} images
  {SPLIT_FILES['dev']}       {sizes['dev']} images
  {SPLIT_FILES['test']}      {sizes['test']} images

Each image shows one group of 1-3 identical flat shapes at a location, or two groups side by
side or one above the other, on a muted, lightly cluttered background.
Shapes: {', '.join(SHAPES)}.
Colours: {', '.join(COLOURS)}.
Sizes: small, large.

The five captions of an image paraphrase its content with different templates and synonyms;
every caption names each group's count, colour and shape and the relation, some name sizes
and a single group's location.
{n_twins} images are twins of another: the same scene with one thing changed (for two groups
mostly which group is where or has which colour or shape, so the captions' words barely change);
a twin and its original are in the same split. {shared} of {n_images} images share their full
description with another image.

truth/scenes.csv (each image's scene, and which image it is a twin of) and
truth/mentions.csv (the attributes each caption names, empty when it does not) are NOT part
of the format; they feed harness.data.flickr8k.oracle_scores and tests.
"""


# ----------------------------------------------------------------------------------------------
# Oracle
# ----------------------------------------------------------------------------------------------


def oracle_scores(root: str | Path, frame: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Image × caption scores of a reader who sees each image's scene and parses every caption.

    Row ``i`` is ``frame``'s row ``i``, column ``j`` the ``j``-th caption of ``frame``'s captions
    listed row after row (``caption_ids`` concatenated). A pair scores 1 when everything the
    caption names matches the image's scene, else 0, plus a uniform jitter in ``[0, 0.5)``
    drawn with ``seed``: the metric engine counts ties against the target, and a caption that
    omits sizes or the location fits several images, so the oracle breaks those ties at random.
    Use it as the ceiling of what a model can learn (the module docstring's numbers are its
    expectations over tie-breaks).

    Args:
        root: the directory :func:`generate_flickr8k` wrote.
        frame: rows of that directory as read by :func:`read_flickr8k` (``train`` or ``test``).
        seed: seeds the tie-breaking jitter.
    """
    paths = [Path(root) / "truth" / name for name in ("scenes.csv", "mentions.csv")]
    for path in paths:
        if not path.is_file():
            raise HarnessError(f"{path}: not found; oracle scores need a directory written by generate_flickr8k.")
    scenes = pd.read_csv(paths[0], dtype=str, keep_default_na=False).set_index("image")
    mentions = pd.read_csv(paths[1], dtype=str, keep_default_na=False).set_index("caption_id")
    caption_ids = [cid for ids in frame["caption_ids"] for cid in ids]
    for path, table, keys in ((paths[0], scenes, frame["id"]), (paths[1], mentions, caption_ids)):
        unknown = pd.Index(keys).difference(table.index)
        if len(unknown):
            raise HarnessError(f"{path}: {len(unknown)} rows of the frame are not in it (e.g. {unknown[0]!r}).")
    scene = scenes.loc[frame["id"], list(FIELDS)].to_numpy()  # [I, F]
    named = mentions.loc[caption_ids, list(FIELDS)].to_numpy()  # [C, F]
    fits = np.ones((len(scene), len(named)), dtype=bool)
    for f in range(len(FIELDS)):
        fits &= (named[None, :, f] == "") | (named[None, :, f] == scene[:, None, f])
    return fits + np.random.default_rng(seed).uniform(0, 0.5, fits.shape)


register_dataset(
    DatasetSpec(
        name="flickr8k",
        task=TaskType.RETRIEVAL,
        reader=read_flickr8k,
        generator=generate_flickr8k,
        fold_scheme="kfold",
        metric="rsum",
        description="Flickr8k image-text retrieval: an image and its five captions -> matching embeddings "
        "(rsum: Recall@1/5/10 image-to-text plus text-to-image).",
    )
)

"""Person re-identification: readers of the standard layouts and the embedded default.

Formats (the data directory, or a single folder inside it, as the release archives unpack)::

    market1501,   bounding_box_train/, query/, bounding_box_test/ with <pid>_c<camera>...<ext>:
    dukemtmc      0002_c1s1_000451_03.jpg (Market-1501), 0001_c2_f0046182.jpg (DukeMTMC-reID);
                  pid -1 = junk (dropped), pid 0 = distractor (kept, in the gallery)
    msmt17        list_train.txt, list_val.txt (optional; its rows join train), list_query.txt,
                  list_gallery.txt: lines "<path> <pid>", paths under train/ and test/ (or
                  mask_train_v2/ and mask_test_v2/); the camera is the third "_" field of the name
    rgbnt201      train_171/ and test/, each with RGB/, NI/, TI/ holding images of the same names,
                  <6-digit pid>_cam<camera>_..., e.g. 000123_cam2_0_00.jpg; every test image is
                  both a query and a gallery image (the metric drops the self-match: same id, same camera)
    reid_csv      reid.csv with columns path,pid,camid[,modality][,split] (paths relative to the
                  CSV's folder; split train, query, gallery or test = both; modality rgb, ni or ti)

Every reader returns the same rows: ``train`` and ``test`` with ``id`` (str: the image path
relative to the data folder, the RGB one for multi-modal samples; unique across both), ``pid``
(int64, the dataset's own identity number), ``camid`` (int64, from 0), ``image_path`` (absolute,
the RGB or only image) and, for multi-modal data, ``image_path_ni`` / ``image_path_ti``
(absolute or ``None``); ``test`` also has ``is_query`` and ``is_gallery`` (bool). Rows are sorted
by ``id``. ``meta`` holds ``image_shape`` ``(H, W, 3)``, ``modalities``, ``format``, ``notes``
(every filter and fallback applied, with counts) and ``n_train_ids``. :func:`load_reid_pixels`
decodes a frame's images for one modality, :func:`modality_mask` says which are present, and
:func:`split_query_gallery` is the one rule that turns a set of rows into queries and gallery.

The embedded default (:func:`generate_reid`) draws 64x32 synthetic pedestrians and writes them in
the Market-1501 layout (``market1501``) or the RGBNT201 one (``rgbnt201``): 300 training and 200
test identities, each seen by 4 of 6 cameras, 2 images per camera. Identity lives at three scales
of the 64x32 image, each drawn from its own stream so that a scale can be switched off
(``cue_scales``: a scale left out is drawn afresh for every image and carries nothing):

* ``fine`` (4x4 px): a two-tone texture of period 4 px over the torso (horizontal, vertical,
  diagonal, anti-diagonal stripes or a checker; its phase; its second tone) and a 4x4 badge
  (one of four places on the torso, two colours, one of four 2x2 arrangements);
* ``mid`` (8x8 px): the colours of the body's blocks: the torso's four 8x8-ish quarters, the
  upper and lower legs, and a bag (none, left or right; its colour), all from one palette of
  ten garment colours;
* ``coarse`` (16x16 px): the silhouette (height 44-58 px, width 10-18 px, head radius, gap
  between the legs), skin and hair, and a global tint mixed into every garment colour.

Nuisances: each camera has its own illumination gain, colour cast, haze, blur, horizontal
viewpoint shift and background scene; each image its pose jitter (position, size, stride),
illumination, 1-3 clutter boxes behind the person, a random occluding box (40 % of images) and
Gaussian noise. A query's matches are always under other cameras, so none of its camera's
nuisances helps to find them. For ``rgbnt201`` each sample also has a near-infrared rendering (NI/:
grey, a reflectance mapping unlike luminance, so texture and intensity stay and hue is lost) and
a thermal one (TI/: a warm body on a cold background, blurred: the silhouette only).

Measured on the default Market-layout set (800 queries of 200 identities, 900 gallery images:
800 of the query identities and 100 distractors; :func:`harness.metrics.reid_metrics` on the
images as written, one CPU thread)::

    features                                                 metric      mAP     Rank-1
    random (mean of 20 draws)                                 any         0.010   0.003
    colour histogram (:func:`colour_histogram_features`)      cosine      0.008   0.001
    raw pixels (:func:`raw_pixel_features`)                   euclidean   0.011   0.006
    raw pixels                                                cosine      0.022   0.024
    CNN: 4 x (conv 3x3, BatchNorm, ReLU), 32/64/128/128       cosine      0.540   0.616
      channels, max-pools between, global average pool,
      BatchNorm; identity classifier on train (label
      smoothing 0.1), AdamW 2e-3 one-cycle, batch 64, random
      shifts of 3/2 px, 15 epochs (8 min on 2 CPU threads)

The histogram ranks below chance: without layout, the gallery images nearest a query are other
people under the query's own camera (same illumination, cast and scene), which the protocol
never counts as matches. On the default RGBNT201-layout set (1,600 test images, each a query
and a gallery image) raw pixels with cosine reach mAP 0.018 (RGB), 0.044 (NI), 0.028 (TI).
Generating the default sets takes about 11 s (Market layout, 4,110 files, 17 MB) and 20 s
(RGBNT201 layout, 12,000 files, 48 MB) on one core; reading them back 1-4 s.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from numbers import Integral
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from harness.data import Dataset, DatasetSpec, register_dataset
from harness.data.images import decode_image
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = [
    "read_market1501",
    "read_dukemtmc",
    "read_msmt17",
    "read_rgbnt201",
    "read_reid_csv",
    "load_reid_pixels",
    "modality_mask",
    "split_query_gallery",
    "generate_reid",
    "colour_histogram_features",
    "raw_pixel_features",
    "MODALITIES",
    "PATH_COLUMNS",
    "CUE_SCALES",
    "IMAGE_SUFFIXES",
]

MODALITIES = ("rgb", "ni", "ti")
PATH_COLUMNS = {"rgb": "image_path", "ni": "image_path_ni", "ti": "image_path_ti"}
CUE_SCALES = ("fine", "mid", "coarse")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MISSING_MODALITY = ("error", "mask")
MARKET_DIRS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}
MSMT17_LISTS = {"list_train.txt": "train", "list_val.txt": "train", "list_query.txt": "query",
                "list_gallery.txt": "gallery"}  # fmt: skip
MSMT17_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}  # searched in this order
RGBNT201_DIRS = {"train_171": "train", "test": "test"}
RGBNT201_MODALITY_DIRS = {"rgb": "RGB", "ni": "NI", "ti": "TI"}
CSV_SPLITS = ("train", "query", "gallery", "test")

_MARKET_NAME = re.compile(r"(-1|\d+)_c(\d)")  # torchreid's ([-\d]+)_c(\d), with pid -1 or digits
_MARKET_PATTERN = "<pid>_c<camera>..., e.g. 0002_c1s1_000451_03.jpg (Market-1501) or 0001_c2_f0046182.jpg (DukeMTMC)"
_RGBNT_NAME = re.compile(r"(\d{6})_cam(\d)(?=[_.])")
_RGBNT_PATTERN = "<6-digit pid>_cam<camera>_..., e.g. 000123_cam2_0_00.jpg"

# ----------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------


def read_market1501(root: str | Path, *, image_size: Sequence[int] | None = None) -> Dataset:
    """Read the Market-1501 layout (module docstring); bad input is a one-line :class:`HarnessError`.

    Junk images (pid -1) are dropped and distractors (pid 0) kept, as torchreid does; both are
    counted in ``meta["notes"]``, as are files that are not images (skipped).

    Args:
        root: the folder holding ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``,
            or the folder holding that one.
        image_size: ``(height, width)`` to resize every image to; ``None`` (default) keeps the
            size of the first training image, which every image must then have.
    """
    return _read_market_layout(Path(root), "market1501", image_size)


def read_dukemtmc(root: str | Path, *, image_size: Sequence[int] | None = None) -> Dataset:
    """Read DukeMTMC-reID (the Market-1501 layout, names ``0001_c2_f0046182.jpg``); see :func:`read_market1501`.

    Duke's crops differ in size, so pass ``image_size`` (e.g. ``(256, 128)``).
    """
    return _read_market_layout(Path(root), "dukemtmc", image_size)


def _read_market_layout(root: Path, name: str, image_size) -> Dataset:
    size = _check_image_size(image_size)
    folder = _find_folder(root, [*MARKET_DIRS], "bounding_box_train/, query/ and bounding_box_test/")
    rows, skipped, junk, distractors = [], [], 0, 0
    for sub, role in MARKET_DIRS.items():
        for path in _images_in(folder / sub, skipped):
            match = _MARKET_NAME.match(path.name)
            if match is None:
                raise HarnessError(f"{path}: file name does not parse; expected {_MARKET_PATTERN}.")
            pid, camera = int(match[1]), int(match[2])
            if camera < 1:
                raise HarnessError(f"{path}: camera c{camera}, but cameras count from 1 in {_MARKET_PATTERN}.")
            if pid == -1:
                junk += 1
                continue
            distractors += int(pid == 0 and role == "gallery")
            rows.append(_row(role, f"{sub}/{path.name}", pid, camera - 1, {"rgb": path}))
    notes = []
    if junk:
        notes.append(f"dropped {junk} junk images (pid -1)")
    if distractors:
        notes.append(f"kept {distractors} distractor images (pid 0) in the gallery")
    _note_skipped(notes, skipped)
    return _dataset(name, folder, rows, "market1501", notes, size, ("rgb",), {"image_size": size})


def read_msmt17(root: str | Path, *, image_size: Sequence[int] | None = None) -> Dataset:
    """Read MSMT17 (V1 ``train/``, ``test/`` or V2 ``mask_train_v2/``, ``mask_test_v2/``) from its list files.

    ``list_val.txt`` rows join train (the harness does its own folds). An image listed twice,
    a line that is not ``<path> <pid>``, a name whose third ``_`` field is not a camera number
    and a listed file that does not exist are errors naming the list file and line.

    Args:
        root: the folder holding the list files, or the folder holding that one.
        image_size: ``(height, width)`` to resize every image to (MSMT17's crops differ in size);
            ``None`` (default) requires every image to have the first training image's size.
    """
    size = _check_image_size(image_size)
    required = [name for name in MSMT17_LISTS if name != "list_val.txt"]
    folder = _find_folder(Path(root), required, ", ".join(MSMT17_LISTS) + " (list_val.txt optional)")
    image_dirs = {}
    for part, candidates in MSMT17_DIRS.items():
        found = next((name for name in candidates if (folder / name).is_dir()), None)
        if found is None:
            raise HarnessError(f"{folder}: no image folder for the {part} lists; expected {' or '.join(candidates)}/.")
        image_dirs[part] = found
    rows, seen = [], {}
    for list_name, role in MSMT17_LISTS.items():
        list_path = folder / list_name
        if not list_path.is_file():
            continue  # only list_val.txt may be missing (checked above)
        image_dir = image_dirs["train" if role == "train" else "test"]
        for n, line in enumerate(_read_lines(list_path), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise HarnessError(f"{list_path}, line {n}: expected '<image path> <pid>', got {_clip(line)!r}.")
            relative, pid = fields[0], _non_negative(fields[1])
            if pid is None:
                raise HarnessError(f"{list_path}, line {n}: pid {fields[1]!r} is not a non-negative integer.")
            parts = Path(relative).name.split("_")
            camera = _non_negative(parts[2]) if len(parts) > 2 else None
            if camera is None or camera < 1:
                raise HarnessError(
                    f"{list_path}, line {n}: {Path(relative).name!r}: the third '_' field must be the camera "
                    "number counting from 1, e.g. 0000_000_01_0303morning_0015_0.jpg."
                )
            image_id = f"{image_dir}/{Path(relative).as_posix()}"
            if image_id in seen:
                raise HarnessError(
                    f"{list_path}, line {n}: {relative!r} is also listed in {seen[image_id]}; an image is listed once."
                )
            seen[image_id] = f"{list_name}, line {n}"
            path = folder / image_dir / relative
            if not path.is_file():
                raise HarnessError(f"{list_path}, line {n}: {path} not found.")
            rows.append(_row(role, image_id, pid, camera - 1, {"rgb": path}))
    notes = [] if (folder / "list_val.txt").is_file() else ["no list_val.txt; train is list_train.txt alone"]
    return _dataset("msmt17", folder, rows, "msmt17", notes, size, ("rgb",), {"image_size": size})


def read_rgbnt201(
    root: str | Path, *, image_size: Sequence[int] | None = None, missing_modality: str = "error"
) -> Dataset:
    """Read RGBNT201 (RGB, near-infrared and thermal crops of the same names); bad input is a :class:`HarnessError`.

    Samples are the images of ``RGB/``; the NI and TI images of the same name complete them.
    Files in NI/ or TI/ without an RGB image are left out (counted in ``meta["notes"]``).

    Args:
        root: the folder holding ``train_171/`` and ``test/``, or the folder holding that one.
        image_size: ``(height, width)`` to resize every image to; ``None`` (default) requires
            every image to have the first training image's size.
        missing_modality: ``"error"`` (default): a sample without its NI or TI image is an error
            naming the missing file; ``"mask"``: that path is ``None`` (zeros in
            :func:`load_reid_pixels`, ``False`` in :func:`modality_mask`) and the count is noted.
    """
    size = _check_image_size(image_size)
    _check_choice("missing_modality", missing_modality, MISSING_MODALITY)
    folder = _find_folder(Path(root), [*RGBNT201_DIRS], "train_171/ and test/ (each with RGB/, NI/, TI/)")
    rows, skipped, masked, orphans = [], [], dict.fromkeys(MODALITIES[1:], 0), 0
    for sub, role in RGBNT201_DIRS.items():
        rgb_dir = folder / sub / RGBNT201_MODALITY_DIRS["rgb"]
        if not rgb_dir.is_dir():
            raise HarnessError(f"{rgb_dir}: not a directory; RGBNT201 keeps {sub}/RGB/, {sub}/NI/ and {sub}/TI/.")
        names = []
        for path in _images_in(rgb_dir, skipped):
            match = _RGBNT_NAME.match(path.name)
            if match is None:
                raise HarnessError(f"{path}: file name does not parse; expected {_RGBNT_PATTERN}.")
            if int(match[2]) < 1:
                raise HarnessError(f"{path}: camera cam{match[2]}, but cameras count from 1 in {_RGBNT_PATTERN}.")
            paths: dict[str, Path | None] = {"rgb": path}
            for modality in MODALITIES[1:]:
                other = folder / sub / RGBNT201_MODALITY_DIRS[modality] / path.name
                if not other.is_file():
                    if missing_modality == "error":
                        raise HarnessError(
                            f"{other}: not found; {sub}/RGB/{path.name} has no {modality.upper()} image "
                            f"({modality} modality); missing_modality='mask' reads such samples without it."
                        )
                    masked[modality] += 1
                    other = None
                paths[modality] = other
            names.append(path.name)
            rows.append(_row(role, f"{sub}/RGB/{path.name}", int(match[1]), int(match[2]) - 1, paths))
        known = set(names)
        for modality in MODALITIES[1:]:
            other_dir = folder / sub / RGBNT201_MODALITY_DIRS[modality]
            if other_dir.is_dir():
                orphans += sum(p.name not in known for p in _images_in(other_dir, []))
    notes = [f"{n} samples have no {m.upper()} image (masked: path None)" for m, n in masked.items() if n]
    if orphans:
        notes.append(f"left out {orphans} NI/TI images that have no RGB image of the same name")
    _note_skipped(notes, skipped)
    options = {"image_size": size, "missing_modality": missing_modality}
    return _dataset("rgbnt201", folder, rows, "rgbnt201", notes, size, MODALITIES, options)


def read_reid_csv(
    root: str | Path,
    *,
    file: str = "reid.csv",
    image_size: Sequence[int] | None = None,
    missing_modality: str = "error",
) -> Dataset:
    """Read a CSV of ``path,pid,camid[,modality][,split]`` rows; bad input is a one-line :class:`HarnessError`.

    ``pid`` and ``camid`` are non-negative integers (``camid`` is used as written, from 0);
    other columns are ignored. With ``modality`` (``rgb``, ``ni``, ``ti``, any case) the rows of
    one sample share split, pid, camid and file name, and every sample needs its RGB row.
    ``split`` ``test`` makes an image both a query and a gallery image; an image is listed once.
    Without ``split`` half of the identities (ranked by a SHA-256 of the pid) are the test set,
    split by :func:`split_query_gallery`, and ``meta["notes"]`` says so.

    Args:
        root: the data folder; ``id`` is each image's path relative to it.
        file: the CSV, relative to ``root`` (default ``reid.csv``); image paths are relative to
            the CSV's folder.
        image_size: ``(height, width)`` to resize every image to; ``None`` (default) requires
            every image to have the first training image's size.
        missing_modality: with a ``modality`` column, ``"error"`` (default) refuses a sample
            that lacks a modality other samples have; ``"mask"`` gives it a ``None`` path.
    """
    size = _check_image_size(image_size)
    _check_choice("missing_modality", missing_modality, MISSING_MODALITY)
    root = Path(root)
    if not root.is_dir():
        raise HarnessError(f"Data directory {str(root)!r} does not exist.")
    path = root / file
    if not path.is_file():
        raise HarnessError(f"{path}: not found; expected a CSV with columns path,pid,camid[,modality][,split].")
    header, records = _read_csv_rows(path)
    has_modality, has_split = "modality" in header, "split" in header
    samples: dict[tuple, dict[str, tuple[int, Path]]] = {}  # sample key -> modality -> (line, path)
    seen: dict[Path, int] = {}
    for line, record in records:
        relative = record["path"].strip()
        if not relative:
            raise HarnessError(f"{path}, line {line}: empty path.")
        values = {}
        for column in ("pid", "camid"):
            values[column] = _non_negative(record[column])
            if values[column] is None:
                raise HarnessError(
                    f"{path}, line {line}: {column} {record[column]!r} is not a non-negative integer."
                )
        modality = record["modality"].strip().lower() if has_modality else "rgb"
        if modality not in MODALITIES:
            raise HarnessError(
                f"{path}, line {line}: modality {record['modality']!r} is not one of {', '.join(MODALITIES)}."
            )
        split = record["split"].strip().lower() if has_split else "test"
        if split not in CSV_SPLITS:
            raise HarnessError(f"{path}, line {line}: split {record['split']!r} is not one of {', '.join(CSV_SPLITS)}.")
        image = path.parent / relative
        if not image.is_file():
            raise HarnessError(f"{path}, line {line}: image {image} not found.")
        key_path = image.absolute()
        if key_path in seen:
            raise HarnessError(
                f"{path}, line {line}: {relative!r} repeats line {seen[key_path]}; list an image once "
                "(split 'test' makes it both a query and a gallery image)."
            )
        seen[key_path] = line
        key = (split if has_split else None, values["pid"], values["camid"], Path(relative).name)
        sample = samples.setdefault(key, {})
        if modality in sample:
            raise HarnessError(
                f"{path}, line {line}: a second {modality} image of the sample of line {sample[modality][0]} "
                "(same split, pid, camid and file name)."
            )
        sample[modality] = (line, image)

    modalities = tuple(m for m in MODALITIES if m == "rgb" or any(m in s for s in samples.values()))
    rows, masked = [], dict.fromkeys(modalities, 0)
    for (split, pid, camid, _), sample in samples.items():
        if "rgb" not in sample:
            line = min(line for line, _ in sample.values())
            raise HarnessError(f"{path}, line {line}: the sample has no rgb row; every sample needs its RGB image.")
        paths: dict[str, Path | None] = {"rgb": sample["rgb"][1]}
        for modality in modalities[1:]:
            if modality not in sample:
                if missing_modality == "error":
                    raise HarnessError(
                        f"{path}, line {sample['rgb'][0]}: the sample has no {modality} row while others do; "
                        "missing_modality='mask' reads such samples without it."
                    )
                masked[modality] += 1
            paths[modality] = sample[modality][1] if modality in sample else None
        rows.append(_row(split or "test", _relative_id(sample["rgb"][1], root), pid, camid, paths))

    notes = [f"{n} samples have no {m} image (masked: path None)" for m, n in masked.items() if n]
    if not has_split:
        rows, note = _hash_split(rows, path)
        notes.append(note)
    options = {"image_size": size, "missing_modality": missing_modality, "file": str(file)}
    return _dataset("reid_csv", root, rows, "csv", notes, size, modalities, options)


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    text = "\n".join(_read_lines(path))
    reader = csv.reader(io.StringIO(text))
    try:
        header = [c.strip().lower() for c in next(reader, [])]
        missing = [c for c in ("path", "pid", "camid") if c not in header]
        if missing:
            raise HarnessError(
                f"{path}, line 1: no {', '.join(missing)} column; expected the header "
                f"path,pid,camid[,modality][,split], "
                f"got {','.join(header)!r}."
            )
        records = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise HarnessError(
                    f"{path}, line {reader.line_num}: expected {len(header)} fields ({','.join(header)}), "
                    f"got {len(row)}."
                )
            records.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as exc:
        raise HarnessError(f"{path}, line {reader.line_num}: not readable CSV ({_one_line(exc)}).") from exc
    if not records:
        raise HarnessError(f"{path}: no rows; expected one row per image after the header.")
    return header, records


def _hash_split(rows: list[dict], path: Path) -> tuple[list[dict], str]:
    """Half of the identities (the lower SHA-256 half of their pids) become test, split by the query rule."""
    pids = sorted({row["pid"] for row in rows})
    if len(pids) < 2:
        raise HarnessError(f"{path}: {len(pids)} identity and no split column; the fallback split needs at least two.")
    ranked = sorted(pids, key=lambda pid: hashlib.sha256(str(pid).encode()).digest())
    test_ids = set(ranked[: len(pids) // 2])
    test = [row for row in rows if row["pid"] in test_ids]
    frame = pd.DataFrame({"id": [r["id"] for r in test], "pid": [r["pid"] for r in test],
                          "camid": [r["camid"] for r in test]})  # fmt: skip
    for row, query in zip(test, split_query_gallery(frame)):
        row.update(split="test", is_query=bool(query), is_gallery=not query)
    for row in rows:
        if row["pid"] not in test_ids:
            row.update(split="train", is_query=False, is_gallery=False)
    n_query = sum(row["is_query"] for row in test)
    note = (f"no split column: {len(test_ids)} of {len(pids)} identities (chosen by a hash of the pid) are the "
            f"test set, split by split_query_gallery into {n_query} queries and {len(test) - n_query} gallery "
            "images")  # fmt: skip
    return rows, note


# ----------------------------------------------------------------------------------------------
# Shared reading
# ----------------------------------------------------------------------------------------------


def _row(split: str, image_id: str, pid: int, camid: int, paths: dict[str, Path | None]) -> dict:
    """One image; ``split`` is train, query, gallery or test (= query and gallery)."""
    return {"split": "train" if split == "train" else "test", "id": image_id, "pid": int(pid), "camid": int(camid),
            "paths": paths, "is_query": split in ("query", "test"),
            "is_gallery": split in ("gallery", "test")}  # fmt: skip


def _dataset(name: str, root: Path, rows: list[dict], fmt: str, notes: list[str], size: tuple[int, int] | None,
             modalities: tuple[str, ...], options: dict[str, Any]) -> Dataset:  # fmt: skip
    """The frames of the module docstring from the rows, after the checks every layout shares."""
    columns = [PATH_COLUMNS[m] for m in modalities]
    frames = {}
    for split in ("train", "test"):
        chosen = sorted((row for row in rows if row["split"] == split), key=lambda row: row["id"])
        data = {
            "id": [row["id"] for row in chosen],
            "pid": np.array([row["pid"] for row in chosen], dtype=np.int64),
            "camid": np.array([row["camid"] for row in chosen], dtype=np.int64),
        }
        for modality, column in zip(modalities, columns):
            values = [row["paths"].get(modality) for row in chosen]
            values = [None if p is None else str(Path(p).absolute()) for p in values]
            data[column] = values if modality == "rgb" else pd.Series(values, dtype=object)
        if split == "test":
            data["is_query"] = np.array([row["is_query"] for row in chosen], dtype=bool)
            data["is_gallery"] = np.array([row["is_gallery"] for row in chosen], dtype=bool)
        frames[split] = pd.DataFrame(data)
    train, test = frames["train"], frames["test"]
    for what, count in (("training", len(train)), ("query", int(test["is_query"].sum())),
                        ("gallery", int(test["is_gallery"].sum()))):  # fmt: skip
        if not count:
            raise HarnessError(f"{root}: no {what} images (after filtering); a re-ID dataset needs all three kinds.")
    ids = pd.concat([train["id"], test["id"]])
    if ids.duplicated().any():
        raise HarnessError(f"{root}: image {ids[ids.duplicated()].iloc[0]!r} is listed twice.")
    unmatched = _unmatched_queries(test)
    if unmatched[0]:
        notes.append(f"{unmatched[0]} query images of {unmatched[1]} identities have no gallery image of their "
                     "identity under another camera (the metric skips them)")  # fmt: skip
    shape = _image_shape((train, test), columns, size)
    return Dataset(
        name=name,
        task=TaskType.REID,
        train=train,
        test=test,
        id_col="id",
        target_col="pid",
        group_col="pid",
        root=root,
        meta={"image_shape": shape, "modalities": tuple(modalities), "format": fmt, "notes": notes,
              "n_train_ids": int(train["pid"].nunique())},  # fmt: skip
        media_cols=tuple(columns),
        options=options,
    )


def _unmatched_queries(test: pd.DataFrame) -> tuple[int, int]:
    """Queries (and their identities) without a gallery image of the same pid under another camera."""
    gallery_cams: dict[int, set[int]] = {}
    for pid, camid in zip(test["pid"][test["is_gallery"]], test["camid"][test["is_gallery"]]):
        gallery_cams.setdefault(int(pid), set()).add(int(camid))
    lonely = [int(pid) for pid, camid in zip(test["pid"][test["is_query"]], test["camid"][test["is_query"]])
              if not gallery_cams.get(int(pid), set()) - {int(camid)}]  # fmt: skip
    return len(lonely), len(set(lonely))


def _image_shape(frames, columns: list[str], size: tuple[int, int] | None) -> tuple[int, int, int]:
    """``(H, W, 3)``: the option, or the first training image's size after checking every image's header."""
    if size is not None:
        return size[0], size[1], 3
    first = Path(frames[0]["image_path"].iloc[0])
    expected = _header_size(first)
    for frame in frames:
        for column in columns:
            for path in frame[column]:
                if path is None:
                    continue
                found = _header_size(Path(path))
                if found != expected:
                    raise HarnessError(
                        f"{path}: image is {found[0]}x{found[1]}, expected {expected[0]}x{expected[1]} like "
                        f"{first.name}; pass image_size=(height, width) to resize every image."
                    )
    return expected[1], expected[0], 3


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise HarnessError(f"{path}: not a decodable image ({_one_line(exc)}).") from exc


def _find_folder(root: Path, markers: list[str], what: str) -> Path:
    """``root`` when it holds every marker, else the single folder inside it that does."""
    if not root.is_dir():
        raise HarnessError(f"Data directory {str(root)!r} does not exist.")
    if all((root / m).exists() for m in markers):
        return root
    children = [c for c in sorted(root.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    holding = [c for c in children if all((c / m).exists() for m in markers)]
    if len(holding) == 1:
        return holding[0]
    missing = [m for m in markers if not (root / m).exists()]
    detail = f"{len(holding)} folders inside it do" if holding else f"it lacks {', '.join(missing)}"
    raise HarnessError(f"{root}: expected {what} in it or in a single folder inside it; {detail}.")


def _images_in(folder: Path, skipped: list[Path]) -> list[Path]:
    """Image files directly in ``folder``, sorted; other visible files go to ``skipped``."""
    if not folder.is_dir():
        raise HarnessError(f"{folder}: not a directory.")
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(path)
    return images


def _note_skipped(notes: list[str], skipped: list[Path]) -> None:
    if skipped:
        notes.append(f"skipped {len(skipped)} files that are not images ({', '.join(IMAGE_SUFFIXES)}), "
                     f"e.g. {skipped[0].name}")  # fmt: skip


def _relative_id(path: Path, root: Path) -> str:
    absolute, base = path.absolute(), root.absolute()
    return absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else absolute.as_posix()


def _check_image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if (isinstance(image_size, (str, bytes)) or not isinstance(image_size, Sequence) or len(image_size) != 2
            or any(isinstance(v, bool) or not isinstance(v, Integral) or v < 1 for v in image_size)):  # fmt: skip
        raise HarnessError(f"image_size must be (height, width), two positive integers, or None; got {image_size!r}.")
    return int(image_size[0]), int(image_size[1])


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HarnessError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def _non_negative(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not utf-8 text ({_one_line(exc)}).") from exc


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Pixels, modalities, the query rule
# ----------------------------------------------------------------------------------------------


def load_reid_pixels(dataset: Dataset, frame: pd.DataFrame, modality: str = "rgb") -> np.ndarray:
    """Pixels of ``frame``'s rows for one modality, uint8 ``[len(frame), H, W, 3]`` in frame order.

    Every image is decoded as RGB (NI and TI too) and, when the reader was given
    ``image_size``, resized to ``meta["image_shape"]``; otherwise a file of another size (changed
    since it was read) is a :class:`HarnessError` naming it. Rows whose path is ``None`` (a
    masked modality) are zeros: :func:`modality_mask` tells them apart.
    """
    if modality not in dataset.meta["modalities"]:
        raise HarnessError(
            f"{dataset.name} has no {modality!r} images; its modalities are {', '.join(dataset.meta['modalities'])}."
        )
    column = PATH_COLUMNS[modality]
    if column not in frame.columns:
        raise HarnessError(f"the frame has no {column!r} column for the {modality!r} modality.")
    height, width, _ = dataset.meta["image_shape"]
    resize = dataset.options.get("image_size") is not None
    hint = "pass image_size=(height, width) to resize every image"
    pixels = np.zeros((len(frame), height, width, 3), dtype=np.uint8)
    for row, path in enumerate(frame[column]):
        if path is not None and path == path:  # None or NaN: masked
            pixels[row] = decode_image(Path(path), (height, width, 3), resize, hint)
    return pixels


def modality_mask(frame: pd.DataFrame, modalities: Iterable[str]) -> np.ndarray:
    """bool ``[len(frame), M]``: whether each row has an image of each modality (in the order given).

    A modality whose column the frame lacks is absent from every row.
    """
    modalities = list(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise HarnessError(f"modality {unknown[0]!r} is not one of {', '.join(MODALITIES)}.")
    mask = np.zeros((len(frame), len(modalities)), dtype=bool)
    for k, modality in enumerate(modalities):
        column = PATH_COLUMNS[modality]
        if column in frame.columns:
            mask[:, k] = frame[column].notna().to_numpy()
    return mask


def split_query_gallery(frame: pd.DataFrame) -> np.ndarray:
    """``is_query`` (bool, per row in frame order) of rows with ``id``, ``pid``, ``camid``; the rest is gallery.

    The rule, per identity: rows are ordered by (id, pid, camid), so the result depends on the
    rows' content, not their order. Cameras are visited in increasing ``camid``; each gets one
    query (its first row) when, with it added, every chosen query still has at least one
    gallery row of its identity under another camera. That greedy pass is optimal: every
    camera gets a query when at least two cameras have two or more rows, otherwise every
    camera but the last; an identity seen by one camera has no query.
    """
    missing = [c for c in ("id", "pid", "camid") if c not in frame.columns]
    if missing:
        raise HarnessError(
            f"split_query_gallery: the frame has no {', '.join(missing)} column; expected id, pid, camid."
        )
    ids = frame["id"].astype(str).to_numpy()
    pids, cams = frame["pid"].to_numpy(), frame["camid"].to_numpy()
    order = np.lexsort((cams, pids, ids))
    rows_of: dict[Any, dict[Any, list[int]]] = {}
    for position in order:
        rows_of.setdefault(pids[position], {}).setdefault(cams[position], []).append(int(position))
    is_query = np.zeros(len(frame), dtype=bool)
    for by_camera in rows_of.values():
        counts = {camera: len(rows) for camera, rows in by_camera.items()}
        chosen: list = []
        for camera in sorted(by_camera):
            if _every_query_matched([*chosen, camera], counts):
                chosen.append(camera)
        for camera in chosen:
            is_query[by_camera[camera][0]] = True
    return is_query


def _every_query_matched(queries: list, counts: dict) -> bool:
    gallery = {camera: n - (camera in queries) for camera, n in counts.items()}
    total = sum(gallery.values())
    return all(total - gallery[camera] > 0 for camera in queries)


# ----------------------------------------------------------------------------------------------
# Trivial baselines
# ----------------------------------------------------------------------------------------------


def colour_histogram_features(pixels: np.ndarray, bins: int = 8) -> np.ndarray:
    """float32 ``[N, bins³]``: each image's joint RGB histogram, normalised to sum 1, square-rooted.

    The square root makes cosine similarity the Bhattacharyya coefficient. Colour alone, no
    layout: the baseline a re-ID model must beat.
    """
    pixels = _check_pixels(pixels)
    if isinstance(bins, bool) or not isinstance(bins, Integral) or not 1 <= bins <= 256 or 256 % bins:
        raise HarnessError(f"bins must be a divisor of 256, got {bins!r}.")
    n = len(pixels)
    codes = (pixels // (256 // bins)).astype(np.int64)
    flat = (codes[..., 0] * bins + codes[..., 1]) * bins + codes[..., 2]
    flat = flat.reshape(n, -1) + np.arange(n)[:, None] * bins**3
    counts = np.bincount(flat.ravel(), minlength=n * bins**3).reshape(n, bins**3)
    return np.sqrt(counts / max(1, flat.shape[1])).astype(np.float32)


def raw_pixel_features(pixels: np.ndarray) -> np.ndarray:
    """float32 ``[N, H·W·3]``: the pixels scaled to [0, 1]; the other trivial baseline."""
    pixels = _check_pixels(pixels)
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def _check_pixels(pixels) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
        raise HarnessError(f"pixels must be uint8 [N, H, W, 3], got a {pixels.dtype} array of shape {pixels.shape}.")
    return pixels


# ----------------------------------------------------------------------------------------------
# Generator of the embedded default
# ----------------------------------------------------------------------------------------------

LAYOUTS = ("market1501", "rgbnt201")
_H, _W = 64, 32  # the canvas every image is drawn on (then resized to image_size)
_YY, _XX = np.mgrid[0:_H, 0:_W]
_GARMENTS = np.array([
    (35, 40, 62), (28, 28, 30), (120, 120, 126), (222, 222, 216), (200, 180, 140),
    (172, 40, 46), (96, 110, 56), (112, 70, 40), (110, 160, 212), (122, 40, 82),
], dtype=np.float32)  # fmt: skip
_TONES = np.array([(246, 246, 240), (18, 18, 22), (232, 200, 40), (40, 142, 90), (222, 110, 30), (92, 60, 172)],
                  dtype=np.float32)  # fmt: skip
_BADGES = np.array([(250, 30, 30), (30, 200, 60), (40, 90, 250), (250, 230, 30), (250, 250, 250), (10, 10, 10)],
                   dtype=np.float32)  # fmt: skip
_SKIN = np.array([(236, 200, 170), (200, 150, 116), (150, 100, 70), (96, 66, 46)], dtype=np.float32)
_HAIR = np.array([(22, 16, 10), (92, 60, 30), (200, 170, 92), (130, 130, 130), (160, 62, 30)], dtype=np.float32)
_TINT = 0.25  # share of the coarse global tint in every garment colour
_TONE_MIX = 0.55  # share of the texture's second tone in its marked pixels
_NIR_WEIGHTS = np.array([0.55, 0.10, 0.35], dtype=np.float32)  # unlike luminance (0.30, 0.59, 0.11)
_SCENE = 0.4  # share of the camera's scene in an image's background colours (the rest is the image's own)
_OCCLUSION = 0.4  # share of images with an occluding box
_NOISE = 5.0  # Gaussian pixel noise, sigma on the 0-255 scale
_BADGE_CELLS = (((0, 1), (1, 0)), ((0, 1), (0, 1)), ((0, 0), (1, 1)), ((0, 0), (0, 1)))  # 2x2 arrangements


def _draw_cues(rng: np.random.Generator, scale: str) -> dict[str, Any]:
    """One scale's identity cues (module docstring); a fixed number of draws per scale."""
    if scale == "coarse":
        v = rng.random(9)
        return {"height": 44 + int(15 * v[0]), "width": 10 + int(9 * v[1]), "head": 3.0 + 2.5 * v[2],
                "gap": int(5 * v[3]), "tint": np.float32(255) * v[4:7].astype(np.float32),
                "skin": int(len(_SKIN) * v[7]), "hair": int(len(_HAIR) * v[8])}  # fmt: skip
    if scale == "mid":
        v = rng.random(8)
        return {"torso": [int(len(_GARMENTS) * x) for x in v[:4]], "legs": [int(len(_GARMENTS) * x) for x in v[4:6]],
                "bag": int(3 * v[6]), "bag_colour": int(len(_GARMENTS) * v[7])}  # fmt: skip
    v = rng.random(7)
    first = int(len(_BADGES) * v[4])
    second = (first + 1 + int((len(_BADGES) - 1) * v[5])) % len(_BADGES)  # never the first colour
    return {"pattern": int(5 * v[0]), "phase": int(4 * v[1]), "tone": int(len(_TONES) * v[2]),
            "badge_at": int(4 * v[3]), "badge": (first, second), "badge_kind": int(4 * v[6])}  # fmt: skip


def _identity_cues(seed: int, pid: int) -> dict[str, dict]:
    return {scale: _draw_cues(np.random.default_rng([seed, 0, k, pid]), scale) for k, scale in enumerate(CUE_SCALES)}


def _image_cues(seed: int, pid: int, image: int, cue_scales: tuple[str, ...]) -> dict[str, dict]:
    """An image's cues: the identity's at the scales in ``cue_scales``, fresh draws at the others.

    Each scale has its own stream, and the image's nuisances another, so leaving a scale out
    changes that scale's cues and nothing else.
    """
    own = _identity_cues(seed, pid)
    return {scale: own[scale] if scale in cue_scales else _draw_cues(np.random.default_rng([seed, 1, k, image]), scale)
            for k, scale in enumerate(CUE_SCALES)}  # fmt: skip


def _camera(seed: int, camera: int) -> dict[str, Any]:
    """A camera's nuisances: illumination, colour cast, haze, blur, viewpoint shift, background scene."""
    v = np.random.default_rng([seed, 2, camera]).random(16).astype(np.float32)
    return {"gain": 0.6 + 0.7 * v[0], "cast": 0.75 + 0.5 * v[1:4], "haze": 35 * v[4], "blur": 0.9 * v[5],
            "shift": int(9 * v[6]) - 4, "wall": 40 + 180 * v[7:10], "floor": 30 + 150 * v[10:13],
            "horizon": 34 + int(16 * v[13]), "warmth": 30 * v[14]}  # fmt: skip


class _Paint:
    """The canvas in colour and, for the thermal rendering, in temperature (0-255)."""

    def __init__(self, colour: np.ndarray, heat: np.ndarray):
        self.colour, self.heat = colour, heat

    def box(self, y0: int, y1: int, x0: int, x1: int, colour, heat: float) -> None:
        y0, y1, x0, x1 = max(0, y0), min(_H, y1), max(0, x0), min(_W, x1)
        if y0 < y1 and x0 < x1:
            self.colour[y0:y1, x0:x1] = colour
            self.heat[y0:y1, x0:x1] = heat

    def mask(self, mask: np.ndarray, colour, heat: float) -> None:
        self.colour[mask] = colour
        self.heat[mask] = heat


def _render(cues: dict[str, dict], camera: dict[str, Any], rng: np.random.Generator, *,
            person: bool = True, infrared: bool = False) -> tuple[np.ndarray, ...]:  # fmt: skip
    """One image (and its NI and TI renderings with ``infrared``) as uint8 ``[64, 32, 3]`` / ``[64, 32]``."""
    v = rng.random(48).tolist()  # [0:4], [45:48] background, [4:28] clutter, [28:36] pose, [36:44] occluder, [44] light
    noise = rng.standard_normal((3, _H, _W)).astype(np.float32)
    # background: the camera's wall and floor mixed with the image's own, and 1-3 clutter boxes
    colour = np.empty((_H, _W, 3), dtype=np.float32)
    colour[: camera["horizon"]] = _SCENE * camera["wall"] + (1 - _SCENE) * 255 * np.array(v[0:3], dtype=np.float32)
    colour[camera["horizon"] :] = _SCENE * camera["floor"] + (1 - _SCENE) * 255 * np.array(v[45:48], dtype=np.float32)
    heat = 40 + camera["warmth"] + 12 * _YY.astype(np.float32) / _H
    paint = _Paint(colour, heat)
    for k in range(1 + int(3 * v[3])):
        a = v[4 + 8 * k : 12 + 8 * k]
        w, h = 4 + int(11 * a[0]), 4 + int(21 * a[1])
        x0, y0 = int((_W - w + 4) * a[2]) - 2, int((_H - h) * a[3])
        paint.box(y0, y0 + h, x0, x0 + w, np.array(a[4:7], dtype=np.float32) * 255, 40 + 60 * a[7])
    if person:
        _paint_person(paint, cues, camera, v[28:36])
    a = v[36:44]
    if a[0] < _OCCLUSION:  # an occluding box, mostly over the lower body
        w, h = 6 + int(11 * a[1]), 8 + int(17 * a[2])
        x0, y0 = int((_W - w + 1) * a[3]), 20 + int((_H - 20 - h + 1) * a[4])
        paint.box(y0, y0 + h, x0, x0 + w, np.array(a[5:8], dtype=np.float32) * 255, 50 + 60 * a[5])

    light = camera["gain"] * (0.88 + 0.24 * v[44])
    rgb = _camera_effects(colour * (light * camera["cast"]) + camera["haze"], camera["blur"], noise)
    if not infrared:
        return (rgb,)
    nir = _camera_effects(colour @ _NIR_WEIGHTS * light + 15, camera["blur"], noise[:1])
    tir = _camera_effects(heat, 1.6, noise[1:2] * 0.8)
    return rgb, nir, tir


def _paint_person(paint: _Paint, cues: dict[str, dict], camera: dict[str, Any], v: list[float]) -> None:
    coarse, mid, fine = cues["coarse"], cues["mid"], cues["fine"]
    height = coarse["height"] + int(3 * v[0]) - 1
    width = coarse["width"] + int(3 * v[1]) - 1
    gap = coarse["gap"] + int(3 * v[2])
    centre = _W // 2 + camera["shift"] + int(5 * v[3]) - 2
    bottom = min(_H, 62 + int(5 * v[4]) - 2)
    top, head = bottom - height, coarse["head"]
    left, right = centre - width // 2, centre - width // 2 + width
    torso_top = top + int(round(2 * head))
    torso_height = int(round(0.38 * (bottom - torso_top)))
    legs_top, middle = torso_top + torso_height, torso_top + torso_height // 2
    tint = coarse["tint"] * _TINT
    garment = [_GARMENTS[k] * (1 - _TINT) + tint for k in (*mid["torso"], *mid["legs"], mid["bag_colour"])]
    body_heat = 175 + 10 * v[5]

    if mid["bag"]:  # a bag beside the lower torso (behind the torso's edge)
        x0 = left - 5 if mid["bag"] == 1 else right - 1
        paint.box(middle - 2, middle + 6, x0, x0 + 6, garment[6], 80)
    # legs: two columns with the gap between them, upper and lower colours, dark shoes
    leg = max(2, (width - 2 - gap) // 2)
    for x0 in (left + 1, right - 1 - leg):
        knee = (legs_top + bottom) // 2
        paint.box(legs_top, knee, x0, x0 + leg, garment[4], body_heat)
        paint.box(knee, bottom - 2, x0, x0 + leg, garment[5], body_heat)
        paint.box(bottom - 2, bottom, x0, x0 + leg, (30, 26, 24), body_heat - 20)
    # torso: four quarters, the fine texture and the badge over them
    for (y0, y1), (x0, x1), colour in zip(
        [(torso_top, middle)] * 2 + [(middle, legs_top)] * 2, [(left, centre), (centre, right)] * 2, garment[:4]
    ):
        paint.box(y0, y1, x0, x1, colour, body_heat)
    region = (slice(max(0, torso_top), legs_top), slice(max(0, left), min(_W, right)))
    u, w = _XX[region] - left, _YY[region] - torso_top
    marked = _texture(fine["pattern"], fine["phase"], u, w)
    block = paint.colour[region]
    block[marked] = block[marked] * (1 - _TONE_MIX) + _TONES[fine["tone"]] * _TONE_MIX
    bx = (left + centre) // 2 if fine["badge_at"] % 2 == 0 else (centre + right) // 2
    by = (torso_top + middle) // 2 if fine["badge_at"] < 2 else (middle + legs_top) // 2
    for i, cells in enumerate(_BADGE_CELLS[fine["badge_kind"]]):
        for j, cell in enumerate(cells):
            y0, x0 = by - 2 + 2 * i, bx - 2 + 2 * j
            paint.box(y0, y0 + 2, x0, x0 + 2, _BADGES[fine["badge"][cell]], body_heat)
    # head: skin, hair over its upper part
    cy, cx = top + head, centre
    face = (_YY + 0.5 - cy) ** 2 + (_XX + 0.5 - cx) ** 2 <= head**2
    paint.mask(face, _SKIN[coarse["skin"]], 215)
    paint.mask(face & (_YY + 0.5 < cy - 0.25 * head), _HAIR[coarse["hair"]], 205)


def _texture(kind: int, phase: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The two-tone pattern of period 4 px: horizontal, vertical, diagonal, anti-diagonal stripes, checker."""
    if kind == 0:
        return (v + phase) % 4 < 2
    if kind == 1:
        return (u + phase) % 4 < 2
    if kind == 2:
        return (u + v + phase) % 4 < 2
    if kind == 3:
        return (u - v + phase) % 4 < 2
    return ((u + phase) // 2 + v // 2) % 2 == 0


def _camera_effects(image: np.ndarray, blur: float, noise: np.ndarray) -> np.ndarray:
    """Blur (the camera's lens) then sensor noise, as uint8; ``image`` is [H, W, 3] or [H, W]."""
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if blur > 0.05:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(float(blur))))
    noise = noise.transpose(1, 2, 0) if image.ndim == 3 else noise[0]
    return np.clip(np.round(pixels + _NOISE * noise), 0, 255).astype(np.uint8)


def generate_reid(
    root: str | Path,
    *,
    layout: str = "market1501",
    n_train_ids: int = 300,
    n_test_ids: int = 200,
    n_cams: int = 6,
    cams_per_id: int = 4,
    images_per_id_cam: int = 2,
    cue_scales: Sequence[str] = CUE_SCALES,
    image_size: Sequence[int] = (_H, _W),
    n_distractors: int | None = None,
    n_junk: int | None = None,
    seed: int = 0,
) -> None:
    """Write the synthetic pedestrians of the module docstring in the Market-1501 or RGBNT201 layout.

    Each identity is seen by ``cams_per_id`` of the ``n_cams`` cameras, ``images_per_id_cam``
    times each. ``market1501``: training identities in ``bounding_box_train/``; of each test
    identity one image per camera in ``query/`` (chosen by :func:`split_query_gallery`), the
    rest in ``bounding_box_test/`` with ``n_distractors`` images of random people (pid 0000)
    and ``n_junk`` background crops (pid -1). ``rgbnt201``: ``train_171/`` and ``test/``, each
    with ``RGB/``, ``NI/`` and ``TI/``. A ``README.md`` says what the folder holds. The same
    arguments give byte-identical files.

    Args:
        root: directory to write into (created).
        layout: ``"market1501"`` (default) or ``"rgbnt201"``.
        n_train_ids, n_test_ids: identities of each split (default 300 and 200).
        n_cams: cameras, 2-9 (default 6); ``cams_per_id``: cameras per identity (default 4).
        images_per_id_cam: images of an identity per camera (default 2).
        cue_scales: the scales that carry identity (default all of ``fine``, ``mid``, ``coarse``);
            the others are drawn afresh per image.
        image_size: ``(height, width)`` of the files (default ``(64, 32)``, the canvas; other
            sizes are resized from it).
        n_distractors, n_junk: Market layout only (default 100 and 10).
        seed: seeds every draw (default 0).
    """
    _check_choice("layout", layout, LAYOUTS)
    market = layout == "market1501"
    for name, value, least in (("n_train_ids", n_train_ids, 1), ("n_test_ids", n_test_ids, 1), ("n_cams", n_cams, 2),
                               ("cams_per_id", cams_per_id, 2), ("images_per_id_cam", images_per_id_cam, 1),
                               ("seed", seed, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise HarnessError(f"{name} must be an integer >= {least}, got {value!r}.")
    if n_cams > 9 or cams_per_id > n_cams:
        raise HarnessError(
            f"need 2 <= cams_per_id <= n_cams <= 9 (one-digit camera names), got {cams_per_id} and n_cams={n_cams}."
        )
    if n_train_ids + n_test_ids > (9999 if market else 999999):
        raise HarnessError(
            f"{layout} names hold {4 if market else 6}-digit pids; got {n_train_ids + n_test_ids} identities."
        )
    extras = {"n_distractors": (n_distractors, 100), "n_junk": (n_junk, 10)}
    for name, (value, default) in extras.items():
        if value is not None and not market and value:
            raise HarnessError(f"{name} applies to the market1501 layout only, got {value!r} for rgbnt201.")
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 0):
            raise HarnessError(f"{name} must be an integer >= 0, got {value!r}.")
    n_distractors = (100 if n_distractors is None else n_distractors) if market else 0
    n_junk = (10 if n_junk is None else n_junk) if market else 0
    if isinstance(cue_scales, str) or any(scale not in CUE_SCALES for scale in cue_scales):
        raise HarnessError(f"cue_scales must be a subset of {', '.join(CUE_SCALES)}, got {cue_scales!r}.")
    cue_scales = tuple(s for s in CUE_SCALES if s in cue_scales)
    size = _check_image_size(image_size)
    if size is None or min(size) < 8:
        raise HarnessError(f"image_size must be (height, width) of at least 8 pixels each, got {image_size!r}.")

    root = Path(root)
    cameras = {c: _camera(seed, c) for c in range(1, n_cams + 1)}
    plan = []  # (pid, camera, index within identity and camera, is test identity)
    for pid in range(1, n_train_ids + n_test_ids + 1):
        chosen = np.random.default_rng([seed, 4, pid]).choice(n_cams, cams_per_id, replace=False)
        plan += [(pid, int(c) + 1, j, pid > n_train_ids) for c in sorted(chosen) for j in range(images_per_id_cam)]
    extra_cams = np.random.default_rng([seed, 5]).integers(1, n_cams + 1, n_distractors + n_junk).tolist()
    plan += [(0, c, 0, True) for c in extra_cams[:n_distractors]]  # distractors: random people
    plan += [(-1, c, 0, True) for c in extra_cams[n_distractors:]]  # junk: background only

    if market:
        names = [f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s1_{k:06d}_01.jpg"
                 for k, (pid, cam, _, _) in enumerate(plan)]  # fmt: skip
        test = [k for k, (pid, _, _, is_test) in enumerate(plan) if is_test and pid > 0]
        query = split_query_gallery(pd.DataFrame({"id": [names[k] for k in test], "pid": [plan[k][0] for k in test],
                                                  "camid": [plan[k][1] for k in test]}))  # fmt: skip
        queries = {k for k, q in zip(test, query) if q}
        folders = [("bounding_box_train" if not t else "query" if k in queries else "bounding_box_test",)
                   for k, (_, _, _, t) in enumerate(plan)]  # fmt: skip
    else:
        names = [f"{pid:06d}_cam{cam}_0_{j:02d}.jpg" for pid, cam, j, _ in plan]
        folders = [tuple(f"{'test' if t else 'train_171'}/{d}" for d in ("RGB", "NI", "TI")) for *_, t in plan]
    for directory in sorted({d for group in folders for d in group}):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for k, (pid, cam, _, _) in enumerate(plan):
        cues = _image_cues(seed, max(pid, 0), k, cue_scales if pid > 0 else ())
        images = _render(cues, cameras[cam], np.random.default_rng([seed, 3, k]), person=pid >= 0, infrared=not market)
        for directory, pixels in zip(folders[k], images):
            image = Image.fromarray(pixels)
            if size != (_H, _W):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            image.save(root / directory / names[k], quality=95, subsampling=0)
    settings = {"n_train_ids": n_train_ids, "n_test_ids": n_test_ids, "n_cams": n_cams, "cams_per_id": cams_per_id,
                "images_per_id_cam": images_per_id_cam, "cue_scales": cue_scales, "seed": seed}  # fmt: skip
    readme = _readme(layout, settings, size, n_distractors, n_junk)
    (root / "README.md").write_text(readme, encoding="utf-8")


def _generate_rgbnt201(root: str | Path, **options) -> None:
    """The embedded default of ``rgbnt201``: :func:`generate_reid` with ``layout="rgbnt201"``."""
    generate_reid(root, **{"layout": "rgbnt201", **options})


def _readme(layout: str, args: dict[str, Any], size: tuple[int, int], n_distractors: int, n_junk: int) -> str:
    settings = ", ".join(f"{k}={v!r}" for k, v in args.items())
    if layout == "market1501":
        files = f"""Files as in Market-1501: bounding_box_train/ (training identities), query/ (of each test
identity one image per camera) and bounding_box_test/ (the other test images, {n_distractors}
distractors named 0000_* and {n_junk} junk crops named -1_*, which readers drop). Names are
<pid>_c<camera>s1_<image>_01.jpg, cameras counted from 1."""
    else:
        files = """Files as in RGBNT201: train_171/ and test/, each with RGB/, NI/ (near-infrared: grey, a
reflectance mapping unlike luminance) and TI/ (thermal: a warm body on a cold background,
blurred) holding the same names <6-digit pid>_cam<camera>_0_<image>.jpg. Every test image is
both a query and a gallery image."""
    return f"""Synthetic stand-in for a person re-identification dataset, written by
harness.data.reid.generate_reid (layout={layout!r}, {settings}).
These are NOT photographs of people: drawings of pedestrians, {size[0]} px high and {size[1]} px wide.

{files}

Identity cues, by scale of the 64x32 canvas (only those in cue_scales are fixed per identity):
  fine    4x4 px: a two-tone torso texture of period 4 px (orientation, phase, second tone), a 4x4 badge
  mid     8x8 px: colours of the torso quarters, upper and lower legs, a bag (side and colour)
  coarse  16x16 px: silhouette (height, width, head size, leg gap), skin, hair, a global tint

Nuisances: per camera illumination, colour cast, haze, blur, viewpoint shift and background; per
image pose jitter, illumination, clutter boxes, an occluding box (40 % of images), pixel noise.
"""


def _register(name: str, reader, generator, description: str) -> None:
    register_dataset(DatasetSpec(name=name, task=TaskType.REID, reader=reader, generator=generator,
                                 fold_scheme="group", metric="map", description=description))  # fmt: skip


_register("market1501", read_market1501, generate_reid,
          "Market-1501 person re-ID (bounding_box_train/, query/, bounding_box_test/); the embedded default is a "
          "synthetic pedestrian set in that layout (mAP).")  # fmt: skip
_register("dukemtmc", read_dukemtmc, None, "DukeMTMC-reID in the Market-1501 layout (mAP).")
_register("msmt17", read_msmt17, None, "MSMT17 (V1 or V2) person re-ID from its list files (mAP).")
_register("rgbnt201", read_rgbnt201, _generate_rgbnt201,
          "RGBNT201 multi-modal (RGB, near-infrared, thermal) person re-ID; the embedded default is a synthetic "
          "pedestrian set in that layout (mAP).")  # fmt: skip
_register("reid_csv", read_reid_csv, None,
          "Any re-ID set listed in reid.csv (path,pid,camid[,modality][,split]) (mAP).")  # fmt: skip

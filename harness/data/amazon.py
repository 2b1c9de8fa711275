"""Amazon reviews and MQL4GRec's preprocessed layout as sequential recommendation; generator of a 2014-format sample.

Amazon review releases (McAuley et al.), one category per read; the release is detected from the
reviews file's name::

    2014  reviews_<Category>_5.json.gz   JSON lines: reviewerID, asin, overall, unixReviewTime, ...
          meta_<Category>.json.gz        one Python dict literal per line (NOT JSON; read with
                                         ast.literal_eval): asin, title, description, imUrl,
                                         categories (a list of category paths), ...
    2018  <Category>_5.json.gz           JSON lines: reviewerID, asin, overall, unixReviewTime, ...
          (or <Category>_5.json)
          meta_<Category>.json.gz        JSON lines: asin, title, description (string or list),
          (or meta_<Category>.json)      imageURL / imageURLHighRes (lists), category (one path)
    both  images/<asin>.jpg              optional local images, one per item (.jpg, .jpeg or .png)

Files are read as gzip when they start with the gzip magic bytes, whatever their name.
:func:`read_amazon` turns the reviews into sequences exactly as the MovieLens reader turns
ratings (:mod:`harness.data.sequences`): repeated reviews of one item merge into the latest, the
k-core filter (default 5 / 5, as the 5-core files) repeats until stable, equal timestamps (Amazon's
are whole days, so ties are common) keep the file's order (``tie_order="file"``) or ascending
asin (``"item_id"``), items are renumbered ``1 .. I`` in ascending asin and users ``1 .. U`` in
ascending reviewerID, and leave-one-out gives ``train`` (history ``s_1 .. s_{n-2}``, target
``s_{n-1}``) and ``test`` (``s_1 .. s_{n-1}``, ``s_n``). Meta lines of items outside the final
catalogue are skipped unparsed (meta files list every product, the 5-core reviews a fraction).

Item texts. Titles, descriptions and category names are HTML-unescaped, stripped of tags and of
repeated whitespace. ``items["description"]`` is what a text encoder should read:
``"{title}. {description}"``, or :data:`FALLBACK_DESCRIPTION_TEMPLATE` (``"{title}. Category:
{categories}."``, ``"{title}."`` without categories) for an item without a description; an item
without a title (a meta line lacking it, or no meta line at all) is titled
:data:`FALLBACK_TITLE_TEMPLATE` (``"Item {asin}"``). ``items["genres"]``, the column genre-aware
families group by, holds the categories one level below the release's top category ("Skin
Care" in Beauty > Skin Care > Face), ``"|"``-joined. Each user's ``user_text`` is built from their
training history only, with :data:`HISTORY_TEXT_TEMPLATE`. Items without meta, title or image
are counted in ``stats`` and reported in one warning; what the filters dropped in another.

MQL4GRec's preprocessed layout (one folder per dataset ``<D>``, e.g. ``Instruments``)::

    <D>.inter.json           {"<user index>": [item index, ...]}   time order, 0-based indices
    <D>.item.json            {"<item index>": {"title": ..., "description": ..., "categories": "A,B,C"}}
    <D>.emb-<model>.npy      optional item embeddings, row r = item index r (e.g. emb-llama-td)
    <D>.index_<kind>.json    optional semantic IDs, {"<item index>": ["<a_12>", "<b_3>", ...]}
                             (kind: lemb for text, vitemb for image codes)
    images/<item index>.jpg  optional item images (a harness convention, not MQL4GRec's)

:func:`read_mql4grec` reads a list's order as time order (position = timestamp, so no ties), then
the same merge, filter and leave-one-out. Harness ids follow ascending index among the items and
users left, so item ``i`` is index ``i - 1`` when every item is kept; ``items["raw_item_id"]``
always holds the index, which is also the item's row in every embedding file. Embedding files
are checked (row count = highest item index + 1) but not loaded: ``meta["embeddings"]`` maps
``<model>`` to the file, ``meta["index_files"]`` maps ``<kind>`` to the semantic-ID file (its
contents are the semantic-ID family's to validate). :func:`write_mql4grec` writes any
sequential-recommendation dataset in this layout (inter and item files).

The embedded default (:func:`generate_amazon`) writes the 2014 format for a small Beauty
catalogue with planted tastes (sub-category continuity and per-user category preferences) and
the gaps real files have: meta lines without a title, items without a meta line or an image.
"""

from __future__ import annotations

import ast
import colorsys
import datetime
import gzip
import html
import io
import json
import re
import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from harness.data import Dataset, DatasetSpec, register_dataset
from harness.data.sequences import (
    Sequences,
    build_sequences,
    check_sequence_options,
    files_by_stem,
    history_texts,
    leave_one_out_dataset,
)
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = [
    "read_amazon",
    "read_mql4grec",
    "write_mql4grec",
    "generate_amazon",
    "FALLBACK_TITLE_TEMPLATE",
    "FALLBACK_DESCRIPTION_TEMPLATE",
    "HISTORY_TEXT_TEMPLATE",
]

FALLBACK_TITLE_TEMPLATE = "Item {asin}"
FALLBACK_DESCRIPTION_TEMPLATE = "{title}. Category: {categories}."
HISTORY_TEXT_TEMPLATE = "Shops for {genres}. Recently reviewed: {titles}."
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
IMAGE_FOLDER = "images"
_REVIEWS_2014 = re.compile(r"^reviews_(?P<category>.+)_5\.json(\.gz)?$")
_REVIEWS_2018 = re.compile(r"^(?P<category>.+)_5\.json(\.gz)?$")
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")
_TAG = re.compile(r"<[^>]*>")

# ----------------------------------------------------------------------------------------------
# Amazon reader
# ----------------------------------------------------------------------------------------------


def read_amazon(
    root: str | Path,
    *,
    category: str | None = None,
    min_rating: float | None = None,
    min_user_interactions: int = 5,
    min_item_interactions: int = 5,
    sampled_negatives: int = 100,
    negative_sampling: str = "uniform",
    tie_order: str = "file",
) -> Dataset:
    """Read one category of an Amazon review release (2014 or 2018) as leave-one-out sequences.

    The frames are those of :func:`harness.data.movielens.read_movielens` (one row per user:
    ``user_id``, ``history``, ``target``, ``user_text``). ``meta`` holds ``n_items`` (items +
    padding), the ``items`` table (``item_id``, ``raw_item_id`` (asin), ``title``,
    ``description`` (the text to encode), ``raw_description``, ``categories`` (the first category
    path, ``" > "``-joined), ``genres``, ``image_url``, ``poster_path`` (the local image or
    ``None``)), the ``users`` table (``user_id``, ``raw_user_id`` = reviewerID), the ``genres``
    present, ``format`` (``"amazon-2014"`` or ``"amazon-2018"``), ``category``, ``stats`` and
    the sampled-protocol options. Bad input is a one-line :class:`HarnessError` naming the file
    and line; missing meta, titles and images are warnings.

    Args:
        root: the data directory.
        category: which category to read when the directory holds several (the ``<Category>``
            of the file names); ``None`` (default) reads the only one.
        min_rating: reviews rated ``>= min_rating`` become interactions; ``None`` (default) keeps all.
        min_user_interactions: users with fewer interactions are removed (default 5, at least 3).
        min_item_interactions: items with fewer interactions are removed (default 5); removal
            repeats until every user and item meets its threshold.
        sampled_negatives: negatives per target in the ``_sampled`` protocol (default 100).
        negative_sampling: ``"uniform"`` (default) or ``"popularity"``.
        tie_order: order of one user's reviews with equal timestamps: ``"file"`` (default, the
            reviews file's line order) or ``"item_id"`` (ascending asin).
    """
    root = Path(root)
    check_sequence_options(min_rating, min_user_interactions, min_item_interactions, sampled_negatives,
                           negative_sampling, tie_order)  # fmt: skip
    release, category, reviews_path = _find_reviews(root, category)
    meta_path = next((p for p in (root / f"meta_{category}.json.gz", root / f"meta_{category}.json") if p.is_file()),
                     None)  # fmt: skip

    # reviews -> merged, thresholded, k-core filtered, time-ordered sequences
    users, items, ratings, timestamps = _read_reviews(reviews_path)
    built = build_sequences(users, items, ratings, timestamps, source=reviews_path, min_rating=min_rating,
                            min_user_interactions=min_user_interactions, min_item_interactions=min_item_interactions,
                            tie_order=tie_order, item_noun="item", event_noun="review")  # fmt: skip
    if built.report:
        warnings.warn(f"{reviews_path.name}: {built.report}", UserWarning, stacklevel=2)
    stats = built.stats

    # catalogue: meta of the items kept, local images
    asins = [str(a) for a in built.raw_items]
    metas = _read_meta(meta_path, set(asins), release, stats) if meta_path else {}
    catalogue = _catalogue(asins, [metas.get(a) for a in asins], stats)
    images, unknown = files_by_stem(root / IMAGE_FOLDER, asins)
    catalogue["poster_path"] = pd.Series(images, dtype=object)  # None: no image
    stats.update(images_found=sum(p is not None for p in images), unknown_image_ids=len(unknown))
    _warn_gaps(category, meta_path.name if meta_path else f"meta_{category}.json.gz", meta_path is not None,
               (root / IMAGE_FOLDER).is_dir(), len(asins), stats)  # fmt: skip

    meta = {"format": f"amazon-{release}", "category": category, "sampled_negatives": int(sampled_negatives),
            "negative_sampling": negative_sampling, "tie_order": tie_order}  # fmt: skip
    options = {"category": category, "min_rating": min_rating, "min_user_interactions": int(min_user_interactions),
               "min_item_interactions": int(min_item_interactions), "tie_order": tie_order}  # fmt: skip
    return _dataset("amazon", root, built, catalogue, meta, options)


def _find_reviews(root: Path, category: str | None) -> tuple[str, str, Path]:
    """``(release, category, reviews file)``: the one reviews file present, or the one of ``category``."""
    if not root.is_dir():
        raise HarnessError(f"Data directory {str(root)!r} does not exist.")
    found = []
    for path in sorted(root.iterdir()):
        match_2014, match_2018 = _REVIEWS_2014.match(path.name), _REVIEWS_2018.match(path.name)
        if not path.is_file() or path.name.startswith("meta_") or not (match_2014 or match_2018):
            continue
        found.append(("2014", match_2014["category"], path) if match_2014 else ("2018", match_2018["category"], path))
    if not found:
        raise HarnessError(
            f"{root}: no Amazon reviews file found; expected reviews_<Category>_5.json.gz (2014 release) or "
            "<Category>_5.json.gz / <Category>_5.json (2018 release)."
        )
    listed = ", ".join(f"{c} ({path.name})" for _, c, path in found)
    if category is not None:
        found = [f for f in found if f[1] == category]
        if not found:
            raise HarnessError(f"{root}: no reviews file for category={category!r}; found {listed}.")
    if len(found) > 1:
        fix = "keep one reviews file per category" if category is not None else "choose one with category=<Category>"
        raise HarnessError(f"{root}: {len(found)} reviews files ({listed}); {fix}.")
    return found[0]


def _read_reviews(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(reviewerID, asin, overall, unixReviewTime)`` arrays, in file order, validated line by line."""
    users, items, ratings, times = [], [], [], []
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            review = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarnessError(
                f"{path}, line {n}: expected a JSON object with {', '.join(REVIEW_FIELDS)}, got {_clip(line)!r} "
                f"({_one_line(exc)})."
            ) from exc
        if not isinstance(review, dict):
            raise HarnessError(f"{path}, line {n}: expected a JSON object, got {type(review).__name__}.")
        missing = [f for f in REVIEW_FIELDS if f not in review]
        if missing:
            raise HarnessError(
                f"{path}, line {n}: missing field(s) {', '.join(missing)}; every review needs "
                f"{', '.join(REVIEW_FIELDS)}."
            )
        user, item, rating, time = (review[f] for f in REVIEW_FIELDS)
        for name, value in (("reviewerID", user), ("asin", item)):
            if not isinstance(value, str) or not value.strip():
                raise HarnessError(f"{path}, line {n}: {name} must be a non-empty string, got {value!r}.")
        if isinstance(rating, bool) or not isinstance(rating, Real) or not np.isfinite(rating):
            raise HarnessError(f"{path}, line {n}: overall must be a number, got {rating!r}.")
        if isinstance(time, bool) or not isinstance(time, Integral):
            raise HarnessError(f"{path}, line {n}: unixReviewTime must be an integer, got {time!r}.")
        users.append(user.strip())
        items.append(item.strip())
        ratings.append(float(rating))
        times.append(int(time))
    if not users:
        raise HarnessError(f"{path}: no reviews; expected one JSON object per line with {', '.join(REVIEW_FIELDS)}.")
    return np.array(users), np.array(items), np.array(ratings), np.array(times, dtype=np.int64)


def _read_meta(path: Path, wanted: set[str], release: str, stats: dict) -> dict[str, dict]:
    """Meta record of each wanted asin (the first line naming it); other lines are skipped unparsed."""
    expected = "a Python dict literal (2014 meta format)" if release == "2014" else "a JSON object (2018 meta format)"
    parse = ast.literal_eval if release == "2014" else json.loads
    records: dict[str, dict] = {}
    duplicates = 0
    for n, line in _lines(path):
        if not line.strip():
            continue
        quick = _ASIN.search(line)
        if quick and quick[1] not in wanted:
            continue
        try:
            record = parse(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise HarnessError(
                f"{path}, line {n}: expected {expected} with 'asin', got {_clip(line)!r} ({_one_line(exc)})."
            ) from exc
        if not isinstance(record, dict) or not isinstance(record.get("asin"), str):
            raise HarnessError(f"{path}, line {n}: expected {expected} with a string 'asin', got {_clip(line)!r}.")
        asin = record["asin"].strip()
        if asin in records:
            duplicates += 1
        elif asin in wanted:
            records[asin] = record
    stats["meta_duplicates"] = duplicates
    return records


def _catalogue(asins: list[str], records: list[dict | None], stats: dict) -> pd.DataFrame:
    """The items table (without images) from each item's meta record (``None``: no meta line)."""
    titles, raw_descriptions, paths, urls = [], [], [], []
    no_title = 0
    for asin, record in zip(asins, records):
        record = record or {}
        title = _clean(record.get("title"))
        no_title += bool(record) and not title
        titles.append(title or FALLBACK_TITLE_TEMPLATE.format(asin=asin))
        raw_descriptions.append(_clean(record.get("description")))
        paths.append(_category_paths(record.get("categories", record.get("category"))))
        urls.append(_image_url(record))
    stats.update(items_without_meta=sum(r is None for r in records), items_without_title=no_title,
                 items_without_description=sum(not d for d in raw_descriptions))  # fmt: skip
    return _items_table(asins, titles, raw_descriptions, paths, {"image_url": urls})


def _items_table(raw_ids: list, titles: list[str], raw_descriptions: list[str], paths: list[list[list[str]]],
                 extra: dict[str, list]) -> pd.DataFrame:  # fmt: skip
    """``item_id .. genres`` (+ ``extra`` columns) of the Amazon and MQL4GRec catalogues."""
    categories = [" > ".join(p[0]) if p else "" for p in paths]
    return pd.DataFrame({
        "item_id": np.arange(1, len(raw_ids) + 1, dtype=np.int64),
        "raw_item_id": raw_ids,
        "title": titles,
        "description": [_item_text(t, d, c) for t, d, c in zip(titles, raw_descriptions, categories)],
        "raw_description": raw_descriptions,
        "categories": categories,
        "genres": ["|".join(dict.fromkeys(q[1] if len(q) > 1 else q[0] for q in p)) for p in paths],
        **extra,
    })  # fmt: skip


def _item_text(title: str, description: str, categories: str) -> str:
    if description:
        return f"{title}. {description}"
    return FALLBACK_DESCRIPTION_TEMPLATE.format(title=title, categories=categories) if categories else f"{title}."


def _category_paths(value) -> list[list[str]]:
    """Category paths from 2014's list of lists, 2018's one list or a single name; empty names dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    if value and all(isinstance(v, str) for v in value):
        value = [value]
    paths = [[name for name in map(_clean, path) if name] for path in value if isinstance(path, (list, tuple))]
    return [p for p in paths if p]


def _image_url(record: dict) -> str:
    for key in ("imageURLHighRes", "imageURL", "imUrl"):
        value = record.get(key)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _warn_gaps(category: str, meta_name: str, meta_found: bool, image_folder: bool, n_items: int,
               stats: dict) -> None:  # fmt: skip
    """One warning naming the items without a meta line, a title or an image (none when nothing lacks)."""
    untitled = []
    if stats["items_without_meta"]:
        where = meta_name + ("" if meta_found else " (file not found)")
        untitled.append(f"{stats['items_without_meta']:,} have no line in {where}")
    if stats["items_without_title"]:
        untitled.append(f"{stats['items_without_title']:,} have a meta line without a title")
    stats["items_without_image"] = n_items - stats["images_found"]
    parts = [f"{' and '.join(untitled)} (titled {FALLBACK_TITLE_TEMPLATE!r})"] if untitled else []
    if stats["items_without_image"]:
        where = f"{IMAGE_FOLDER}/<asin>.jpg" + ("" if image_folder else f", no {IMAGE_FOLDER}/ folder")
        parts.append(f"{stats['items_without_image']:,} have no image ({where}; their image is masked)")
    if parts:
        warnings.warn(f"{category}: of the {n_items:,} items, {'; '.join(parts)}.", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# MQL4GRec layout: reader and writer
# ----------------------------------------------------------------------------------------------


def read_mql4grec(
    root: str | Path,
    dataset: str | None = None,
    *,
    min_user_interactions: int = 3,
    min_item_interactions: int = 1,
    sampled_negatives: int = 100,
    negative_sampling: str = "uniform",
) -> Dataset:
    """Read MQL4GRec's preprocessed layout (module docstring) as leave-one-out sequences.

    ``root`` is the dataset folder (holding ``<D>.inter.json``) or the folder above it (holding
    ``<D>/<D>.inter.json``). The frames are the MovieLens reader's. ``meta`` holds ``n_items``,
    the ``items`` table (``item_id``, ``raw_item_id`` = the MQL4GRec item index, which is also
    its embedding row, ``title``, ``description`` (the text to encode), ``raw_description``,
    ``categories``, ``genres``, ``poster_path``), the ``users`` table (``raw_user_id`` = the
    user index), ``genres``, ``format`` (``"mql4grec"``), ``dataset`` (``<D>``), ``embeddings``
    (``{"<model>": path}``, rows checked), ``index_files`` (``{"<kind>": path}``), ``stats`` and
    the sampled-protocol options.

    Args:
        root: the dataset folder or its parent.
        dataset: the ``<D>`` of the file names; ``None`` (default) reads the only one found.
        min_user_interactions: users with fewer items are removed (default 3, the least
            leave-one-out needs; the layout is already filtered).
        min_item_interactions: items with fewer interactions are removed (default 1: keep all).
        sampled_negatives: negatives per target in the ``_sampled`` protocol (default 100).
        negative_sampling: ``"uniform"`` (default) or ``"popularity"``.
    """
    check_sequence_options(None, min_user_interactions, min_item_interactions, sampled_negatives,
                           negative_sampling, "file")  # fmt: skip
    folder, name = _find_layout(Path(root), dataset)
    inter_path, item_path = folder / f"{name}.inter.json", folder / f"{name}.item.json"
    if not item_path.is_file():
        raise HarnessError(f"{folder}: found {inter_path.name} but not {item_path.name}; item titles are read there.")

    # sequences: list position is time
    lists = _read_index_json(inter_path, "user", list)
    for user, listed in lists.items():
        if not all(isinstance(i, Integral) and not isinstance(i, bool) and i >= 0 for i in listed):
            raise HarnessError(
                f"{inter_path}: user {user} must map to a list of item indices (integers >= 0), "
                f"got {_clip(repr(listed))}."
            )
    users = np.repeat(np.array(list(lists), dtype=np.int64), [len(v) for v in lists.values()])
    items = np.array([i for v in lists.values() for i in v], dtype=np.int64)
    if not len(items):
        raise HarnessError(f"{inter_path}: no interactions; expected {{\"<user index>\": [item index, ...]}}.")
    positions = np.concatenate([np.arange(len(v)) for v in lists.values()]).astype(np.int64)
    built = build_sequences(users, items, np.ones(len(items)), positions, source=inter_path, min_rating=None,
                            min_user_interactions=min_user_interactions, min_item_interactions=min_item_interactions,
                            tie_order="file", item_noun="item", event_noun="interaction")  # fmt: skip
    if built.report:
        warnings.warn(f"{inter_path.name}: {built.report}", UserWarning, stacklevel=2)
    stats = built.stats

    # catalogue, embeddings, semantic-ID files
    records = _read_index_json(item_path, "item", dict)
    indices = [int(i) for i in built.raw_items]
    missing = [i for i in indices if i not in records]
    stats.update(items_without_meta=len(missing), items_in_item_file=len(records))
    if missing:
        warnings.warn(
            f"{item_path.name}: {len(missing)} of {len(indices)} items have no entry (e.g. "
            f"{', '.join(map(str, missing[:3]))}); they are titled 'Item <index>'.",
            UserWarning,
            stacklevel=2,
        )
    titles = [_clean(records.get(i, {}).get("title")) or f"Item {i}" for i in indices]
    raw_descriptions = [_clean(records.get(i, {}).get("description")) for i in indices]
    paths = [_mql4grec_categories(records.get(i, {}).get("categories")) for i in indices]
    images, _ = files_by_stem(folder / IMAGE_FOLDER, [str(i) for i in indices])
    catalogue = _items_table(indices, titles, raw_descriptions, paths, {"poster_path": pd.Series(images, dtype=object)})
    stats["images_found"] = sum(p is not None for p in images)
    n_rows = max(max(records, default=-1), int(items.max())) + 1
    embeddings = {p.name[len(name) + 5 : -4]: p for p in sorted(folder.glob(f"{name}.emb-*.npy"))}
    for path in embeddings.values():
        _check_embedding(path, n_rows)
    index_files = {p.name[len(name) + 7 : -5]: p for p in sorted(folder.glob(f"{name}.index_*.json"))}

    meta = {"format": "mql4grec", "dataset": name, "embeddings": embeddings, "index_files": index_files,
            "sampled_negatives": int(sampled_negatives), "negative_sampling": negative_sampling}  # fmt: skip
    options = {"dataset": name, "min_user_interactions": int(min_user_interactions),
               "min_item_interactions": int(min_item_interactions)}  # fmt: skip
    return _dataset("mql4grec", folder, built, catalogue, meta, options)


def write_mql4grec(dataset: Dataset, root: str | Path, name: str) -> tuple[Path, Path]:
    """Write a sequential-recommendation dataset as ``<root>/<name>.inter.json`` and ``<name>.item.json``.

    Use it to hand a harness dataset (Amazon, MovieLens, ...) to MQL4GRec-style tooling. User
    ``u``'s full sequence (test history + test target) is written under index ``u - 1``, item
    ``i`` as index ``i - 1``, so :func:`read_mql4grec` reads the same frames back. Each item
    entry holds ``title``, ``description`` (the source's own description, ``raw_description``,
    where the reader kept one; else ``description``) and ``categories`` (``","``-joined, where
    the items table has them). Both files are serialised before either is written, and each is
    renamed into place whole. Returns the two paths.
    """
    if dataset.task is not TaskType.SEQUENTIAL_RECOMMENDATION or "items" not in dataset.meta:
        raise HarnessError(
            f"write_mql4grec needs a sequential-recommendation dataset with meta['items'], got {dataset.name!r} "
            f"({dataset.task.value})."
        )
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise HarnessError(f"name must be a non-empty file-name stem such as 'Instruments', got {name!r}.")
    root = Path(root)
    test = dataset.test.sort_values("user_id")
    inter = {str(int(u) - 1): [int(i) - 1 for i in np.r_[history, target]]
             for u, history, target in zip(test["user_id"], test["history"], test["target"])}  # fmt: skip
    items = dataset.meta["items"].sort_values("item_id")
    descriptions = items["raw_description"] if "raw_description" in items else items["description"]
    entries = {}
    for row, description in zip(items.itertuples(index=False), descriptions):
        entry = {"title": str(row.title), "description": str(description)}
        if "categories" in items:
            entry["categories"] = ",".join(row.categories.split(" > ")) if row.categories else ""
        entries[str(int(row.item_id) - 1)] = entry
    texts = {root / f"{name}.inter.json": json.dumps(inter), root / f"{name}.item.json": json.dumps(entries)}
    from harness.io import atomic_write  # harness.io imports torch; the readers stay without it

    for path, text in texts.items():
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return tuple(texts)


def _find_layout(root: Path, dataset: str | None) -> tuple[Path, str]:
    """``(folder, <D>)`` of the inter file: ``root/<D>.inter.json`` or ``root/<D>/<D>.inter.json``."""
    if not root.is_dir():
        raise HarnessError(f"Data directory {str(root)!r} does not exist.")
    if dataset is not None:
        for folder in (root, root / dataset):
            if (folder / f"{dataset}.inter.json").is_file():
                return folder, dataset
        raise HarnessError(
            f"{root}: no {dataset}.inter.json here or in {dataset}/; expected MQL4GRec's layout "
            f"({dataset}.inter.json, {dataset}.item.json)."
        )
    found = [(p.parent, p.name[: -len(".inter.json")]) for p in sorted(root.glob("*.inter.json"))]
    if not found:
        found = [(p.parent, p.parent.name) for p in sorted(root.glob("*/*.inter.json"))
                 if p.name == f"{p.parent.name}.inter.json"]  # fmt: skip
    if not found:
        raise HarnessError(
            f"{root}: no MQL4GRec <D>.inter.json found (looked for {root}/*.inter.json and {root}/<D>/<D>.inter.json)."
        )
    if len(found) > 1:
        raise HarnessError(f"{root}: several datasets ({', '.join(n for _, n in found)}); choose one with dataset=<D>.")
    return found[0]


def _read_index_json(path: Path, what: str, kind: type) -> dict[int, object]:
    """A JSON object keyed by integer indices (as strings) whose values are all of ``kind``."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: not valid JSON ({_one_line(exc)}).") from exc
    shape = '{"<user index>": [item index, ...]}' if kind is list else '{"<item index>": {"title": ...}}'
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a JSON object {shape}, got {type(data).__name__}.")
    out = {}
    for key, value in data.items():
        if not re.fullmatch(r"\d+", key.strip()):
            raise HarnessError(f"{path}: keys must be {what} indices (integers >= 0), got {key!r}; expected {shape}.")
        if not isinstance(value, kind):
            raise HarnessError(f"{path}: {what} {key} must map to a {'list' if kind is list else 'JSON object'}, "
                               f"got {type(value).__name__}; expected {shape}.")  # fmt: skip
        out[int(key)] = value
    return out


def _mql4grec_categories(value) -> list[list[str]]:
    """MQL4GRec joins one category path with ","; a list is read as Amazon's."""
    return _category_paths(value.split(",") if isinstance(value, str) else value)


def _check_embedding(path: Path, n_rows: int) -> None:
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path}: not a readable .npy array ({_one_line(exc)}).") from exc
    if rows.ndim != 2:
        raise HarnessError(f"{path}: expected a 2-d array (one row per item index), got shape {rows.shape}.")
    if rows.shape[0] != n_rows:
        raise HarnessError(
            f"{path}: {rows.shape[0]} embedding rows, expected {n_rows} (one per item index 0..{n_rows - 1})."
        )


# ----------------------------------------------------------------------------------------------
# Shared: the Dataset, text cleaning, line reading
# ----------------------------------------------------------------------------------------------


def _dataset(name: str, root: Path, built: Sequences, catalogue: pd.DataFrame, meta: dict, options: dict) -> Dataset:
    """The leave-one-out :class:`Dataset` of either reader (user texts from training histories), ``meta`` added."""
    genres = sorted({g for text in catalogue["genres"] for g in text.split("|") if g})
    texts = history_texts([s[:-2] for s in built.sequences], [t.split("|") for t in catalogue["genres"]],
                          list(catalogue["title"]), genres, HISTORY_TEXT_TEMPLATE,
                          any_genre="any category")  # fmt: skip
    users = pd.DataFrame({"user_id": np.arange(1, len(built.sequences) + 1, dtype=np.int64),
                          "raw_user_id": built.raw_users})  # fmt: skip
    meta = {"n_items": len(catalogue) + 1, "items": catalogue, "users": users, "genres": genres,
            "stats": {k: int(v) for k, v in built.stats.items()}, **meta}  # fmt: skip
    return leave_one_out_dataset(name, built.sequences, texts, root, meta, options)


def _clean(value) -> str:
    """Text of a meta field (a list is joined): HTML entities decoded, tags and repeated whitespace removed."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v is not None)
    return " ".join(_TAG.sub(" ", html.unescape(str(value))).split())


def _lines(path: Path):
    """``(line number, line)`` of a UTF-8 text file, gunzipped when it starts with the gzip magic bytes."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    n = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if compressed else open(path, encoding="utf-8")) as lines:
            for n, line in enumerate(lines, 1):
                yield n, line
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        what = "gzip-compressed UTF-8 text" if compressed else "UTF-8 text"
        raise HarnessError(f"{path}, line {n + 1}: not readable as {what} ({_one_line(exc)}).") from exc


def _clip(text: str, n: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Generator of the embedded default (2014 format)
# ----------------------------------------------------------------------------------------------

STAY_PROBABILITY = 0.5  # chance that a step's sub-category is the previous item's
TASTE_CONCENTRATION = 0.4  # Dirichlet concentration of user tastes over the sub-categories
POPULARITY_EXPONENT = 0.7  # item popularity w_i ∝ (rank_i + 1) ** -POPULARITY_EXPONENT
SAME_DAY_SHARE = 0.3  # share of a user's consecutive reviews written the same day (a timestamp tie)
MISSING_SHARES = {"meta": 0.02, "title": 0.04, "description": 0.1, "image": 0.1}  # gaps real files have
_FIRST_DAY, _LAST_DAY = 14610, 16070  # 2010-01-01 .. 2013-12-31, in days since the epoch

# Beauty's sub-categories: (leaf categories, product nouns, description keywords, image hue).
_SUBCATEGORIES = {
    "Skin Care": (("Face", "Body", "Eyes"), ("Face Cream", "Serum", "Cleanser", "Toner", "Eye Gel"),
                  ("hydrating", "hyaluronic acid", "gentle on sensitive skin", "non-comedogenic"), 0.08),
    "Makeup": (("Face", "Eyes", "Lips"), ("Lipstick", "Mascara", "Foundation", "Eyeliner", "Blush"),
               ("long-wearing", "buildable coverage", "smudge-proof", "rich pigment"), 0.92),
    "Hair Care": (("Shampoos", "Conditioners", "Styling Products"), ("Shampoo", "Conditioner", "Hair Mask",
                  "Styling Gel"), ("frizz control", "sulfate-free", "adds volume", "keratin"), 0.55),
    "Fragrance": (("Women's", "Men's"), ("Eau de Parfum", "Body Mist", "Cologne", "Perfume Oil"),
                  ("floral notes", "woody base", "long-lasting scent", "citrus top notes"), 0.75),
    "Tools & Accessories": (("Brushes", "Mirrors", "Bags & Cases"), ("Brush Set", "Makeup Mirror", "Sponge",
                            "Cosmetic Bag"), ("soft synthetic bristles", "travel-friendly", "ergonomic handle",
                                              "easy to clean"), 0.33),
    "Bath & Body": (("Bath", "Cleansers", "Moisturizers"), ("Body Wash", "Bath Bomb", "Body Lotion", "Scrub"),
                    ("shea butter", "relaxing lavender", "exfoliating", "coconut oil"), 0.45),
}  # fmt: skip
_BRANDS = ("Lumina", "Verdant", "Auréa", "Nordlys", "Kaia", "Bellamy", "Oro", "Sable", "Mistral", "Petra")
_ADJECTIVES = ("Daily", "Ultra", "Pure", "Radiant", "Classic", "Gentle", "Intense", "Velvet", "Fresh", "Silk")
_FILLER = ("Dermatologist tested.", "Made without parabens.", "Comes in a recyclable bottle.", "It's cruelty-free.",
           "A customer favourite since 2009.", "Suitable for everyday use.")  # fmt: skip
_ALPHANUMERIC = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def generate_amazon(
    root: str | Path,
    seed: int = 0,
    *,
    n_users: int = 400,
    n_items: int = 160,
    mean_length: float = 9,
    image_size: int = 32,
    category: str = "Beauty",
) -> None:
    """Write a deterministic 2014-format directory: reviews, meta (Python literals) and ``images/<asin>.jpg``.

    Items belong to one of six Beauty sub-categories, which drives their titles, description
    keywords and image colour; popularity is Zipf-like. Each user has a sparse taste over the
    sub-categories; a step stays in the previous item's sub-category with probability
    :data:`STAY_PROBABILITY`, else draws one from the taste, then an unseen item by popularity.
    Ratings rise with the taste's weight of the item's sub-category; timestamps are whole days
    (``unixReviewTime``), with about :data:`SAME_DAY_SHARE` of consecutive reviews on the same day
    (never the last two of a user). :data:`MISSING_SHARES` of the items lack a meta line, a title,
    a description or an image, as real files do. Meta lines are Python dict literals; the gzip
    headers carry no timestamp, so the same arguments give byte-identical files.

    Args:
        root: directory to write into (created).
        seed: seeds every draw.
        n_users: number of users; each writes at least 5 reviews.
        n_items: number of items.
        mean_length: mean reviews per user (lengths are 5 + Poisson(mean_length - 5), at most n_items // 2).
        image_size: image side in pixels (square).
        category: the ``<Category>`` of the file names.
    """
    _check_generator_args(n_users, n_items, mean_length, image_size, category)
    rng = np.random.default_rng(seed)
    names = list(_SUBCATEGORIES)

    # items: sub-category, popularity, ids, texts
    sub = rng.integers(len(names), size=n_items)
    popularity = (rng.permutation(n_items) + 1.0) ** -POPULARITY_EXPONENT
    asins = np.sort(_random_ids(rng, n_items, "B00", 7))

    # users: tastes, sequences, ratings, days
    taste = rng.dirichlet(np.full(len(names), TASTE_CONCENTRATION), size=n_users)
    lengths = np.minimum(5 + rng.poisson(mean_length - 5, size=n_users), n_items // 2)
    reviewers = _random_ids(rng, n_users, "A", 13)
    reviews = []  # (item, reviewer, rating, day)
    for u, n in enumerate(lengths):
        sequence = _draw_sequence(rng, n, taste[u], sub, popularity)
        gaps = np.where(rng.uniform(size=n - 1) < SAME_DAY_SHARE, 0, 1 + rng.geometric(0.05, size=n - 1))
        gaps[-2:] = np.maximum(gaps[-2:], 1)  # validation and test items are never tied
        days = rng.integers(_FIRST_DAY, _LAST_DAY - 400) + np.r_[0, np.cumsum(gaps)]
        match = taste[u][sub[sequence]] / taste[u].max()
        ratings = np.clip(np.rint(2.2 + 2.6 * match + 0.6 * rng.standard_normal(n)), 1, 5)
        reviews += [(int(i), u, float(r), int(d)) for i, r, d in zip(sequence, ratings, days)]
    reviews.sort(key=lambda r: (r[0], r[3], r[1]))  # 5-core files are grouped by item

    root = Path(root)
    (root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    lines = []
    for item, u, rating, day in reviews:
        subcategory = names[sub[item]]
        lines.append(json.dumps({
            "reviewerID": str(reviewers[u]), "asin": str(asins[item]), "reviewerName": f"Reviewer {u + 1}",
            "helpful": [int(rng.integers(3)), int(rng.integers(3, 6))],
            "reviewText": f"{'Love' if rating >= 4 else 'Not sure about'} this {subcategory.lower()} product.",
            "overall": rating, "summary": "Great" if rating >= 4 else "Okay",
            "unixReviewTime": day * 86400,
            "reviewTime": datetime.datetime.fromtimestamp(day * 86400, datetime.timezone.utc).strftime("%m %d, %Y"),
        }))  # fmt: skip
    _write_gzip_lines(root / f"reviews_{category}_5.json.gz", lines)

    missing = {kind: rng.uniform(size=n_items) < share for kind, share in MISSING_SHARES.items()}
    lines = []
    for i in range(n_items):
        leaves, nouns, keywords, hue = _SUBCATEGORIES[names[sub[i]]]
        record = {"asin": str(asins[i])}
        if not missing["title"][i]:
            record["title"] = f"{rng.choice(_BRANDS)} {rng.choice(_ADJECTIVES)} {rng.choice(nouns)}"
        record["price"] = float(np.round(rng.uniform(3, 60), 2))
        record["imUrl"] = f"http://ecx.images-amazon.com/images/I/{asins[i]}.jpg"
        record["salesRank"] = {category: int(rng.integers(1, 200000))}
        record["categories"] = [[category, names[sub[i]], str(rng.choice(leaves))]]
        if not missing["description"][i]:
            chosen = rng.choice(keywords, size=2, replace=False)
            record["description"] = f"{chosen[0].capitalize()} and {chosen[1]}. {rng.choice(_FILLER)}"
        if not missing["meta"][i]:
            lines.append(repr(record))  # a Python dict literal, as the 2014 meta files
        if not missing["image"][i]:
            _render_image(rng, image_size, hue).save(root / IMAGE_FOLDER / f"{asins[i]}.jpg", "JPEG", quality=90)
    _write_gzip_lines(root / f"meta_{category}.json.gz", lines)
    (root / "README.md").write_text(_readme(seed, n_users, n_items, mean_length, image_size, category, len(reviews)),
                                    encoding="utf-8")  # fmt: skip


def _check_generator_args(n_users, n_items, mean_length, image_size, category) -> None:
    for name, value, least in (("n_users", n_users, 10), ("n_items", n_items, 20), ("image_size", image_size, 8)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise HarnessError(f"{name} must be an integer >= {least}, got {value!r}.")
    if isinstance(mean_length, bool) or not isinstance(mean_length, Real) or not mean_length >= 5:
        raise HarnessError(f"mean_length must be a number >= 5 (the 5-core minimum), got {mean_length!r}.")
    if not isinstance(category, str) or not re.fullmatch(r"[A-Za-z0-9_]+", category):
        raise HarnessError(f"category must be a file-name word such as 'Beauty', got {category!r}.")


def _random_ids(rng, n: int, prefix: str, length: int) -> np.ndarray:
    """``n`` distinct ids: ``prefix`` + ``length`` random capitals and digits."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(prefix + "".join(rng.choice(_ALPHANUMERIC, size=length)))
    return rng.permutation(sorted(ids))


def _draw_sequence(rng, n: int, taste: np.ndarray, sub: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """One user's items: sub-category by continuity or taste, then an unseen item by popularity."""
    seen = np.zeros(len(sub), dtype=bool)
    sequence = np.empty(n, dtype=np.int64)
    for t in range(n):
        if t and rng.uniform() < STAY_PROBABILITY:
            group = sub[sequence[t - 1]]
        else:
            group = rng.choice(len(taste), p=taste)
        weight = np.where((sub == group) & ~seen, popularity, 0.0)
        if not weight.any():  # the sub-category is exhausted: any unseen item
            weight = np.where(seen, 0.0, popularity)
        sequence[t] = rng.choice(len(sub), p=weight / weight.sum())
        seen[sequence[t]] = True
    return sequence


def _render_image(rng, size: int, hue: float) -> Image.Image:
    """A product shot: background and bottle colour from the sub-category's hue, plus jitter."""
    background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.25, 0.95))
    product = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + rng.uniform(-0.03, 0.03)) % 1, 0.8, 0.7))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    width, height = rng.uniform(0.25, 0.45) * size, rng.uniform(0.5, 0.8) * size
    left, top = (size - width) / 2 + rng.uniform(-0.1, 0.1) * size, size - height - 0.08 * size
    draw.rectangle((left, top, left + width, top + height), fill=product)
    draw.rectangle((left + 0.3 * width, top - 0.12 * size, left + 0.7 * width, top), fill=(40, 40, 40))
    return image


def _write_gzip_lines(path: Path, lines: list[str]) -> None:
    """Gzip without a name or timestamp in the header, so the bytes depend on the lines only."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as out:
        out.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def _readme(seed, n_users, n_items, mean_length, image_size, category, n_reviews) -> str:
    return f"""# amazon (generated)

Embedded default of the Amazon sequential-recommendation dataset, written by
`harness.data.amazon.generate_amazon` (seed={seed}, n_users={n_users}, n_items={n_items},
mean_length={mean_length}, image_size={image_size}). {n_reviews} reviews.

Files (2014 release format): `reviews_{category}_5.json.gz` (JSON lines: reviewerID, asin, overall,
unixReviewTime, reviewTime, ...; grouped by item), `meta_{category}.json.gz` (one Python dict literal
per line: asin, title, description, price, imUrl, salesRank, categories), `images/<asin>.jpg`
({image_size}x{image_size}).

Planted signal: six Beauty sub-categories drive titles, description keywords and image colour;
item popularity w ~ (rank + 1)^-{POPULARITY_EXPONENT}; each user has a taste over the sub-categories
(Dirichlet({TASTE_CONCENTRATION})); with probability {STAY_PROBABILITY} the next item shares the previous
item's sub-category, else the sub-category is drawn from the taste; the item is drawn within it by
popularity, never one already reviewed. Ratings rise with the taste's weight of the item's
sub-category. About {SAME_DAY_SHARE:.0%} of consecutive reviews share a day (never the last two of a user).

Gaps, as in real files: about {MISSING_SHARES['meta']:.0%} of items have no meta line,
{MISSING_SHARES['title']:.0%} a meta line without a title, {MISSING_SHARES['description']:.0%} no description and
{MISSING_SHARES['image']:.0%} no image; the k-core filter drops the rarest items.
"""


register_dataset(
    DatasetSpec(
        name="amazon",
        task=TaskType.SEQUENTIAL_RECOMMENDATION,
        reader=read_amazon,
        generator=generate_amazon,
        fold_scheme="kfold",
        metric="ndcg@10_full",
        description="Amazon reviews (2014 or 2018 release, one category) -> next-item prediction from review "
        "sequences + product titles, descriptions and images (NDCG@10, full ranking, leave-one-out); the embedded "
        "default is a small 2014-format Beauty sample.",
    )
)
register_dataset(
    DatasetSpec(
        name="mql4grec",
        task=TaskType.SEQUENTIAL_RECOMMENDATION,
        reader=read_mql4grec,
        generator=None,
        fold_scheme="kfold",
        metric="ndcg@10_full",
        description="MQL4GRec's preprocessed Amazon layout (<D>.inter.json, <D>.item.json, optional embeddings and "
        "semantic-ID index files) -> next-item prediction (NDCG@10, full ranking, leave-one-out).",
    )
)

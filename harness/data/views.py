"""The "YouTube views" competition: reader of its on-disk format and generator of the embedded default.

Format (the data directory)::

    train.csv              id, title, description, year, views
    test.csv               id, title, description, year
    thumbnails/<id>.jpg    one thumbnail per id (or a path column, relative to the data directory)

:func:`read_views` returns frames with the standard columns ``id, title, description, year, age,
image_path, image_ok`` (+ ``views`` in train), whatever the real files call them.

The embedded default (:func:`generate_views`) writes that format with a planted signal in each
modality, so every modality is worth learning and a model's per-modality weights can be checked
against the truth. Each row draws one latent per modality and RENDERS it into that modality:

* image: appeal ``u ~ U(0, 1)`` sets the thumbnail's background from cold, grey and dark
  (``u = 0``: blue hue, saturation 0.15, value 0.35) to warm, saturated and bright (``u = 1``:
  orange hue, saturation 0.9, value 0.9) and the radius of a bright central subject from
  0.12 to 0.42 of the height: large, global colour and composition cues that a small CLIP image
  encoder at 64×64 picks up even untrained. 2–5 random shapes and a caption bar are drawn
  independently of views as distractors. ``z_image = std(u)``.
* text: a latent ``t ~ N(0, 1)`` sets how many positive (``official, trailer, live, highlights,
  reaction, premiere``) and negative (``unboxing, vlog, test, rough cut, unedited, draft``)
  keywords the title or description gets: ``n_pos ~ Binomial(2, σ(2.5 t − 0.5))``,
  ``n_neg ~ Binomial(2, σ(−2.5 t − 0.5))``, amid neutral templated vocabulary (topics, creators,
  hooks, filler sentences). ``z_text = std(n_pos − n_neg)``, from the keywords actually written.
* age: upload years 2006–2024 (recent years more common), ``age = reference_year − year`` and
  ``z_age = std(log1p(age))``: older videos have accumulated more views. (The reader's default
  reference year is the latest upload year, 2024, so its ages are one less than the formula's;
  a model learns the same monotone effect either way.)

The target is

.. math:: \\log(1 + views) = 10 + s_{image} z_{image} + s_{text} z_{text} + s_{age} z_{age}
          + noise\\cdot\\varepsilon, \\qquad \\varepsilon \\sim N(0, 1)

rounded to an integer count, where ``std`` standardises over all generated rows (mean 0, std 1)
and ``s`` are the ``strengths`` (1 each by default). At the defaults (``noise = 0.35``) the signal
explains 3 / (3 + 0.35²) ≈ 96 % of the variance of log1p(views): the mean-target baseline's MSLE
is about 3.1, a model reading all three modalities perfectly gets about 0.12, each modality is
worth about a third of the variance. Views range from a few dozen to several million. A strength
of 0 removes that modality from the target while its latent is still drawn and rendered, so the
modality becomes pure noise (the ablation a model's modality weights should follow).
"""

from __future__ import annotations

import colorsys
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from harness.data import Dataset, DatasetSpec, register_dataset
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = ["read_views", "generate_views", "STANDARD_COLUMNS", "POSITIVE_KEYWORDS", "NEGATIVE_KEYWORDS"]

STANDARD_COLUMNS = ("id", "title", "description", "year", "views")
ON_BAD_IMAGE = ("error", "zero")
_NA_TOKENS = {"", "nan", "na", "n/a", "null", "none"}

# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


def read_views(
    root: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    reference_year: int | None = None,
    on_bad_image: str = "error",
    thumbnail_dir: str = "thumbnails",
    image_column: str | None = None,
) -> Dataset:
    """Read and validate a views data directory; every bad input is a one-line :class:`HarnessError`.

    Args:
        root: the data directory.
        columns: standard name → the real file's column name, for files named differently
            (e.g. ``{"id": "video_id", "views": "view_count"}``).
        reference_year: the year ages are measured from; ``None``: the latest upload year in
            train ∪ test (stored in ``meta["reference_year"]``).
        on_bad_image: ``"error"`` rejects a missing or undecodable thumbnail; ``"zero"`` keeps
            the row with ``image_ok=False`` (its image features are zeros and masked) and warns once.
        thumbnail_dir: where ``<id>.jpg`` lives, relative to ``root``.
        image_column: a column holding each row's image path relative to ``root`` instead.
    """
    root = Path(root)
    if on_bad_image not in ON_BAD_IMAGE:
        raise HarnessError(f"on_bad_image must be one of {', '.join(map(repr, ON_BAD_IMAGE))}, got {on_bad_image!r}.")
    names = _column_names(columns)
    train_path, test_path = root / "train.csv", root / "test.csv"
    train = _read_frame(train_path, names, image_column, with_target=True)
    test = _read_frame(test_path, names, image_column, with_target=False)

    shared = pd.Index(train["id"]).intersection(pd.Index(test["id"]))
    if len(shared):
        raise HarnessError(
            f"{len(shared)} ids appear in both {train_path} and {test_path} (e.g. {_preview(shared)}); "
            "a video is either for training or for the submission."
        )

    latest = int(max(train["year"].max(), test["year"].max()))
    if reference_year is None:
        reference_year = latest
    elif isinstance(reference_year, bool) or not isinstance(reference_year, Integral):
        raise HarnessError(f"reference_year must be an integer year or None, got {reference_year!r}.")
    elif reference_year < latest:
        raise HarnessError(
            f"reference_year={reference_year} is earlier than the latest upload year {latest} in the data; "
            "ages would be negative."
        )

    n_bad = _attach_images(root, [(train, train_path), (test, test_path)], thumbnail_dir, image_column, on_bad_image)
    order = ["id", "title", "description", "year", "age", "image_path", "image_ok"]
    train, test = (frame.assign(age=(int(reference_year) - frame["year"]).astype(float)) for frame in (train, test))
    return Dataset(
        name="views",
        task=TaskType.REGRESSION,
        train=train[[*order, "views"]],
        test=test[order],
        id_col="id",
        target_col="views",
        root=root,
        meta={"reference_year": int(reference_year), "n_bad_images": n_bad, "target_min": 0.0},  # views are counts
    )


def _column_names(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Standard name → real column name, validated like an estimator's parameters."""
    if columns is not None and not isinstance(columns, Mapping):
        raise HarnessError(f"columns= must map standard names to column names, got {columns!r}.")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(STANDARD_COLUMNS))
    if unknown:
        raise HarnessError(
            f"columns= maps unknown standard name(s) {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(STANDARD_COLUMNS)}."
        )
    for standard, real in columns.items():
        if not isinstance(real, str) or not real:
            raise HarnessError(f"columns={{{standard!r}: ...}} must be a non-empty column name, got {real!r}.")
    return {standard: columns.get(standard, standard) for standard in STANDARD_COLUMNS}


def _read_frame(path: Path, names: dict[str, str], image_column: str | None, *, with_target: bool) -> pd.DataFrame:
    """One CSV, as standard columns with validated ids, years and (for train) targets."""
    wanted = [c for c in STANDARD_COLUMNS if with_target or c != "views"]
    if not path.is_file():
        raise HarnessError(f"{path}: file not found; a views data directory needs train.csv and test.csv.")
    try:
        # Everything as text: parsing and its errors stay ours, and a title "NA" stays a title.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise HarnessError(
            f"{path}: file is empty; expected a header row {','.join(wanted)} and one row per video."
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable CSV ({_one_line(exc)}).") from exc

    required = [names[c] for c in wanted] + ([image_column] if image_column else [])
    for standard, real in zip(wanted + ["image_column"], required):
        if real not in raw.columns:
            how = (
                "pass image_column= (config data.options.image_column=<column>) naming the path column"
                if standard == "image_column"
                else f"map names with columns={{'{standard}': '<real name>'}} "
                f"(config data.options.columns.{standard}=<real name>)"
            )
            raise HarnessError(
                f"{path}: missing column {real!r}; columns present: {', '.join(map(str, raw.columns))}; {how}."
            )
    if raw.empty:
        need = "a submission needs at least one test row" if not with_target else "training needs at least one row"
        raise HarnessError(f"{path.name} has no rows; {need} ({path}).")

    frame = pd.DataFrame({c: raw[names[c]].str.strip() for c in ("id", "title", "description")})
    _check_ids(frame["id"], path, names["id"])
    frame["year"] = _parse_year(raw[names["year"]], frame["id"], path, names["year"])
    if with_target:
        frame["views"] = _parse_views(raw[names["views"]], frame["id"], path, names["views"])
    if image_column:
        frame["image_path"] = raw[image_column].str.strip()
    return frame


def _check_ids(ids: pd.Series, path: Path, column: str) -> None:
    empty = ids == ""
    if empty.any():
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(empty)[:5])  # +2: header line, 1-based
        raise HarnessError(f"{path}: column {column!r} has {empty.sum()} empty ids (lines {rows}).")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise HarnessError(
            f"{path}: column {column!r} has {len(duplicated)} duplicate ids (e.g. {_preview(duplicated)}); "
            "ids must be unique."
        )


def _parse_year(raw: pd.Series, ids: pd.Series, path: Path, column: str) -> pd.Series:
    text = raw.str.strip()
    missing = text.str.lower().isin(_NA_TOKENS)
    if missing.any():
        raise HarnessError(
            f"{path}: column {column!r} has {missing.sum()} missing upload years "
            f"(ids {_preview(ids[missing])}); every row needs an integer year."
        )
    year = pd.to_numeric(text, errors="coerce").astype(float)
    bad = ~np.isfinite(year) | (year != np.round(year))
    if bad.any():
        first = bad.to_numpy().argmax()
        raise HarnessError(
            f"{path}: column {column!r} must hold integer upload years, got {text.iloc[first]!r} "
            f"for id {ids.iloc[first]!r} ({bad.sum()} bad values)."
        )
    return year.astype("int64")


def _parse_views(raw: pd.Series, ids: pd.Series, path: Path, column: str) -> pd.Series:
    text = raw.str.strip()
    views = pd.to_numeric(text, errors="coerce").astype(float)
    missing = text.str.lower().isin(_NA_TOKENS)
    if missing.any():
        raise HarnessError(
            f"{path}: column {column!r} has {missing.sum()} NaN/missing targets "
            f"(ids {_preview(ids[missing])}); every training row needs a views count."
        )
    problems = {
        "non-numeric": views.isna(),
        "infinite": np.isinf(views),
        "negative": views < 0,
    }
    for what, bad in problems.items():
        if bad.any():
            first = bad.to_numpy().argmax()
            raise HarnessError(
                f"{path}: column {column!r} has {bad.sum()} {what} values (e.g. {text.iloc[first]!r} "
                f"for id {ids.iloc[first]!r}); views must be finite counts >= 0."
            )
    return views


def _attach_images(
    root: Path, frames_and_paths, thumbnail_dir: str, image_column: str | None, on_bad_image: str
) -> int:
    """Add ``image_path`` (absolute) and ``image_ok`` to each frame; return the number of bad images."""
    base = root.absolute()
    bad: list[tuple[Path, str]] = []
    for frame, csv_path in frames_and_paths:
        if image_column:
            paths = [base / p if p else None for p in frame["image_path"]]
        else:
            paths = [base / thumbnail_dir / f"{i}.jpg" for i in frame["id"]]
        reasons = [_image_problem(p) for p in paths]
        frame["image_path"] = [str(p if p is not None else base) for p in paths]
        frame["image_ok"] = np.array([r is None for r in reasons], dtype=bool)
        bad += [(p, f"{r}; id {i!r} in {csv_path.name}") for p, r, i in zip(paths, reasons, frame["id"]) if r]

    n_total = sum(len(frame) for frame, _ in frames_and_paths)
    if bad and on_bad_image == "error":
        path, reason = bad[0]
        layout = f"column {image_column!r}" if image_column else f"{thumbnail_dir}/<id>.jpg"
        raise HarnessError(
            f"{len(bad)} of {n_total} thumbnails are missing or unreadable; first: {path} ({reason}). "
            f"Expected one image per id via {layout}; on_bad_image='zero' "
            "(config data.options.on_bad_image=zero) masks them instead."
        )
    if bad:
        warnings.warn(
            f"{len(bad)} of {n_total} thumbnails are missing or unreadable (first: {bad[0][0]}); "
            "their image features are zeros and masked.",
            UserWarning,
            stacklevel=3,
        )
    return len(bad)


def _image_problem(path: Path | None) -> str | None:
    """Why ``path`` is not a usable image, or ``None``; decodes JPEGs at 1/8 scale to stay fast."""
    if path is None:
        return "no path given"
    if not path.is_file():
        return "file does not exist"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt files
        return f"not a decodable image: {_one_line(exc)}"
    return None


def _preview(values, k: int = 3) -> str:
    values = list(values)
    shown = ", ".join(repr(str(v)) for v in values[:k])
    return shown + (", ..." if len(values) > k else "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Generator of the embedded default
# ----------------------------------------------------------------------------------------------

MODALITIES = ("image", "text", "age")
BASE_LOG_VIEWS = 10.0
YEARS = np.arange(2006, 2025)
POSITIVE_KEYWORDS = ("official", "trailer", "live", "highlights", "reaction", "premiere")
NEGATIVE_KEYWORDS = ("unboxing", "vlog", "test", "rough cut", "unedited", "draft")

# Neutral vocabulary; none of it contains a keyword, so the written keywords are the text signal.
_TOPICS = (
    "street food in Osaka", "a budget gaming PC", "home espresso", "marathon training", "indie game dev",
    "sourdough bread", "electric bikes", "chess openings", "mechanical keyboards", "drone footage",
    "a tiny house build", "jazz piano", "retro consoles", "houseplants", "van conversions", "3D printing",
    "fly fishing", "a synthwave mix", "math puzzles", "bird watching", "Lisbon on foot", "car detailing",
    "knife sharpening", "bouldering", "watercolor portraits", "home solar panels", "ramen from scratch",
    "speedcubing", "vintage cameras", "the Northern Lights", "DIY synthesizers", "a kitchen remodel",
)  # fmt: skip
_CREATORS = (
    "Maya Chen", "TechTom", "Nordic Kitchen", "Lena Ortiz", "PixelForge", "Urban Trails", "DadBuilds",
    "Kofi Mensah", "StudioNine", "The Daily Wrench", "Aiko Sato", "RiverRun Media", "Sam & Priya",
    "Bytesize", "Carlos Ruiz", "Greenhouse Gang", "Moonlit Audio", "Ines Berger",
)  # fmt: skip
_HOOKS = (
    "you won't believe this", "an honest review", "the full story", "beginner guide", "part 2", "deep dive",
    "day one", "behind the scenes", "what nobody tells you", "10 tips", "before and after", "explained",
)  # fmt: skip
_TITLE_TEMPLATES = (
    "{topic}: {hook}", "{creator} on {topic}", "{hook} | {topic}", "{topic} in {minutes} minutes",
    "Why {topic} matters", "{creator} x {topic}", "{topic} ({hook})",
)  # fmt: skip
_SENTENCES = (
    "In this video {creator} looks at {topic}.", "Thanks for watching and see you next week.",
    "Music by {artist}.", "Timestamps are in the pinned comment.", "Shot on a {camera}.",
    "Questions about {topic}? Ask below.", "Follow {creator} for more.", "Sponsored by {sponsor}.",
    "Subscribe so you don't miss the next one.", "All links are below.",
)  # fmt: skip
_ARTISTS = ("Lofi Harbor", "Kai Rivers", "The Paper Boats", "Nova Drift")
_CAMERAS = ("Sony a7 IV", "phone", "GoPro Hero 11", "Canon R6", "Fujifilm X-T5")
_SPONSORS = ("Skillshare", "NordVPN", "Squarespace", "a local bakery")
_TITLE_KEYWORD_FORMS = ("[{Kw}]", "({KW})", "| {Kw}", "{Kw}:")
_DESCRIPTION_KEYWORD_FORMS = ("Tags: {kw}.", "Part of our {kw} series.", "#{tag}")


def generate_views(
    root: str | Path,
    seed: int = 0,
    *,
    n_train: int = 2000,
    n_test: int = 500,
    strengths: Mapping[str, float] | None = None,
    noise: float = 0.35,
    image_size: tuple[int, int] = (160, 90),
    reference_year: int = 2025,
) -> None:
    """Write a deterministic views data directory with the planted signal of the module docstring.

    Besides the competition files it writes ``test_labels.csv`` (``id, views``: the hidden truth
    of the test rows, not part of the competition format, for scoring test predictions in tests)
    and ``README.md`` (the signal and the parameters used). The same arguments give
    byte-identical files.

    Args:
        root: directory to write into (created).
        seed: seeds every draw.
        n_train, n_test: numbers of rows.
        strengths: ``{"image", "text", "age"}`` → weight of that modality's standardised signal in
            log1p(views) (default 1 each; 0 makes the modality pure noise).
        noise: standard deviation of the unexplained part of log1p(views).
        image_size: thumbnail ``(width, height)``.
        reference_year: the year ages are measured from (uploads are 2006–2024).
    """
    strengths = _check_generator_args(n_train, n_test, strengths, noise, image_size, reference_year)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    ids = [f"vid_{i:05d}" for i in range(1, n + 1)]
    weights = np.linspace(1.0, 3.0, len(YEARS))  # recent years have more uploads
    years = rng.choice(YEARS, size=n, p=weights / weights.sum())
    appeal = rng.uniform(size=n)
    titles, descriptions, text_score = _write_texts(rng, rng.standard_normal(n))
    z = {
        "image": _standardise(appeal),
        "text": _standardise(text_score),
        "age": _standardise(np.log1p(reference_year - years)),
    }
    log_views = BASE_LOG_VIEWS + sum(strengths[m] * z[m] for m in MODALITIES) + noise * rng.standard_normal(n)
    views = np.maximum(np.rint(np.expm1(log_views)), 0).astype(np.int64)

    root = Path(root)
    thumbnails = root / "thumbnails"
    thumbnails.mkdir(parents=True, exist_ok=True)
    for video_id, u in zip(ids, appeal):
        _render_thumbnail(rng, u, image_size).save(thumbnails / f"{video_id}.jpg", "JPEG", quality=90)

    frame = pd.DataFrame({"id": ids, "title": titles, "description": descriptions, "year": years, "views": views})
    train, test = frame.iloc[:n_train], frame.iloc[n_train:]
    train.to_csv(root / "train.csv", index=False, lineterminator="\n")
    test.drop(columns="views").to_csv(root / "test.csv", index=False, lineterminator="\n")
    test[["id", "views"]].to_csv(root / "test_labels.csv", index=False, lineterminator="\n")
    (root / "README.md").write_text(_readme(seed, n_train, n_test, strengths, noise, image_size, reference_year))


def _check_generator_args(n_train, n_test, strengths, noise, image_size, reference_year) -> dict[str, float]:
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise HarnessError(f"{name} must be an integer >= 1, got {value!r}.")
    strengths = {**dict.fromkeys(MODALITIES, 1.0), **(strengths or {})}
    unknown = sorted(set(strengths) - set(MODALITIES))
    if unknown:
        raise HarnessError(
            f"strengths has unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(MODALITIES)}."
        )
    for key, value in [*strengths.items(), ("noise", noise)]:
        if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value < 0:
            raise HarnessError(f"{key} must be a finite number >= 0, got {value!r}.")
    if (
        len(image_size) != 2
        or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 16 for s in image_size)
    ):
        raise HarnessError(f"image_size must be (width, height) with both integers >= 16, got {image_size!r}.")
    if isinstance(reference_year, bool) or not isinstance(reference_year, Integral) or reference_year < YEARS[-1]:
        raise HarnessError(
            f"reference_year must be an integer >= {YEARS[-1]} (the latest upload year), got {reference_year!r}."
        )
    return {k: float(v) for k, v in strengths.items()}


def _standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _write_texts(rng: np.random.Generator, latent: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """Titles and descriptions with latent-driven keywords; returns them and ``n_pos − n_neg``."""
    n_pos = rng.binomial(2, _sigmoid(2.5 * latent - 0.5))
    n_neg = rng.binomial(2, _sigmoid(-2.5 * latent - 0.5))
    titles, descriptions = [], []
    for k_pos, k_neg in zip(n_pos, n_neg):
        slots = {
            "topic": rng.choice(_TOPICS), "creator": rng.choice(_CREATORS), "hook": rng.choice(_HOOKS),
            "minutes": int(rng.integers(3, 61)), "artist": rng.choice(_ARTISTS), "camera": rng.choice(_CAMERAS),
            "sponsor": rng.choice(_SPONSORS),
        }  # fmt: skip
        title = [str(rng.choice(_TITLE_TEMPLATES)).format(**slots)]
        has_description = rng.uniform() > 0.05  # some videos have no description
        n_sentences = int(rng.integers(1, 5)) if has_description else 0
        description = [str(s).format(**slots) for s in rng.choice(_SENTENCES, size=n_sentences, replace=False)]
        keywords = [
            *rng.choice(POSITIVE_KEYWORDS, k_pos, replace=False),
            *rng.choice(NEGATIVE_KEYWORDS, k_neg, replace=False),
        ]
        for kw in keywords:
            if has_description and rng.uniform() < 0.5:
                words = str(rng.choice(_DESCRIPTION_KEYWORD_FORMS)).format(kw=kw, tag=kw.replace(" ", ""))
                description.insert(int(rng.integers(0, len(description) + 1)), words)
            else:
                form = str(rng.choice(_TITLE_KEYWORD_FORMS))
                words = form.format(Kw=kw.title(), KW=kw.upper())
                title.insert(0 if form.endswith(":") else len(title), words)
        titles.append(" ".join(title))
        descriptions.append(" ".join(description))
    return titles, descriptions, (n_pos - n_neg).astype(float)


def _render_thumbnail(rng: np.random.Generator, appeal: float, size: tuple[int, int]) -> Image.Image:
    """Background and central subject from ``appeal``; distractor shapes independent of it."""
    width, height = size
    hue = (0.60 - 0.55 * appeal + rng.uniform(-0.03, 0.03)) % 1.0  # blue → orange
    saturation, value = 0.15 + 0.75 * appeal, 0.35 + 0.55 * appeal
    top = np.array(colorsys.hsv_to_rgb(hue, saturation, min(1.0, value + 0.08)))
    bottom = np.array(colorsys.hsv_to_rgb(hue, saturation, value - 0.08))
    gradient = np.linspace(top, bottom, height) * 255  # [H, 3], a vertical gradient
    pixels = np.repeat(gradient[:, None, :], width, axis=1).round().astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)

    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.06, 0.2, 2) * width
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=max(1, height // 30))
    bar_width = rng.uniform(0.3, 0.9) * width  # a caption bar, as on real thumbnails
    bar_colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.rectangle((0.05 * width, 0.82 * height, 0.05 * width + bar_width, 0.94 * height), fill=bar_colour)

    radius = (0.12 + 0.30 * appeal) * height
    cx, cy = width / 2 + rng.uniform(-0.04, 0.04) * width, height / 2 + rng.uniform(-0.04, 0.04) * height
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 236, 160), outline=(40, 40, 40))
    return image


def _readme(seed, n_train, n_test, strengths, noise, image_size, reference_year) -> str:
    s = strengths
    return f"""# views (generated)

Embedded default of the views competition, written by `harness.data.views.generate_views`
(seed={seed}, n_train={n_train}, n_test={n_test}, image_size={image_size[0]}x{image_size[1]}).
Files: `train.csv` (id, title, description, year, views), `test.csv` (no views),
`thumbnails/<id>.jpg`. `test_labels.csv` holds the test rows' true views: it is NOT part of the
competition format, only for scoring test predictions in tests.

Planted signal (each z standardised over all rows):

    log1p(views) = {BASE_LOG_VIEWS} + {s["image"]}*z_image + {s["text"]}*z_text + {s["age"]}*z_age + {noise}*eps

- z_image: thumbnail appeal u ~ U(0,1), rendered as a warm/saturated/bright background (vs
  cold/grey/dark) and a larger bright central subject; other shapes are distractors.
- z_text: n_pos - n_neg, keywords written in the title or description; positive:
  {", ".join(POSITIVE_KEYWORDS)}; negative: {", ".join(NEGATIVE_KEYWORDS)}.
- z_age: log1p({reference_year} - year); uploads are {YEARS[0]}-{YEARS[-1]}.

A strength of 0 leaves the modality rendered but unrelated to views.
"""


register_dataset(
    DatasetSpec(
        name="views",
        task=TaskType.REGRESSION,
        reader=read_views,
        generator=generate_views,
        fold_scheme="stratified",
        metric="msle",
        description="YouTube-style views: thumbnail + title/description + upload year -> views (MSLE).",
    )
)

"""MovieLens-style sequential recommendation: reader of the standard releases and generator of the embedded default.

Formats (the data directory; the first whose ratings file exists wins, in this order)::

    ml-1m    ratings.dat  UserID::MovieID::Rating::Timestamp          (latin-1)
             movies.dat   MovieID::Title::Genres                      (latin-1, genres "|"-joined)
             users.dat    UserID::Gender::Age::Occupation::Zip-code   (latin-1, optional)
    ml-100k  u.data       user id <tab> item id <tab> rating <tab> timestamp
             u.item       movie id | title | release date | video release date | IMDb URL | 19 genre flags
             u.user       user id | age | gender | occupation | zip code   (optional)
    csv      ratings.csv  userId,movieId,rating,timestamp             (utf-8, with header)
             movies.csv   movieId,title,genres                        (utf-8, titles quoted)
             links.csv    movieId,imdbId,tmdbId                       (optional)

Optional side files, the same for every format::

    posters/<movieId>.jpg          one poster per movie (.jpg, .jpeg or .png)
    descriptions.json              {"<movieId>": "plot text"}   (or descriptions.csv: movieId,description)
    user_preferences.json          {"<userId>": "what the user says they like"}

:func:`read_movielens` turns the ratings into one time-ordered sequence per user and splits it
leave-one-out: with a user's items ``s_1 .. s_n`` (oldest first), ``train`` holds the history
``s_1 .. s_{n-2}`` and the validation target ``s_{n-1}``, ``test`` the history ``s_1 .. s_{n-1}``
and the test target ``s_n``. Items are renumbered ``1 .. I`` in ascending raw movie id (0 is the
padding id), users ``1 .. U`` in ascending raw user id. Along the way:

* a user's repeated ratings of one movie count once, at the latest rating (ties: the higher rating);
* ``min_rating`` keeps ratings ``>= min_rating`` as interactions (``None``: every rating);
* users and movies with too few interactions are removed repeatedly until none is left (k-core);
  one warning reports everything dropped (users, movies, interactions) and why;
* interactions with equal timestamps keep the ratings file's order (``tie_order="file"``, a stable
  sort by time, as RecBole), or are ordered by raw movie id (``tie_order="item_id"``). Real
  MovieLens has many same-second ratings (on ml-100k, 415 of 943 users rated their last items in
  the same second), so this choice decides which item is a user's test target; it is part of the
  dataset's fingerprint, so fold files of the two orders never mix.

Texts. An item without a description gets :data:`FALLBACK_DESCRIPTION_TEMPLATE`, e.g.
``"Toy Story. Genres: Animation, Children's, Comedy."``. A user without a preference text in
``user_preferences.json`` gets one written from their training history ``s_1 .. s_{n-2}`` only
(never the validation or test item) with :data:`HISTORY_PREFERENCE_TEMPLATE`::

    "Likes {genres}. Recently watched: {titles}."

``genres``: the three genres most frequent in the history (ties in the standard genre order,
:data:`GENRES`), ``", "``-joined; ``titles``: the history's last five titles (without year),
most recent last, ``"; "``-joined. ``users["preference_source"]`` says which text a user got.

The embedded default (:func:`generate_movielens`) writes the ml-1m format with planted latent
tastes, so that sequence, poster and text models all have something real to learn:

* items: a primary genre (one of the 18 ml-1m genres, Drama and Comedy most common) and 0–2
  secondary genres, a Zipf-like popularity ``w_i ∝ (rank_i + 1)^-0.8``; titles from genre-specific
  word lists (some with latin-1 accents, most with a "(year)" suffix); plot texts with
  genre-specific keywords amid neutral filler; a poster whose colour palette is the primary
  genre's and whose layout (stripes / bars / circles) is the genre cluster of the first secondary
  genre (the primary's when there is none), plus jitter and distractor dots.
* users: a sparse taste over genres ``θ ~ Dirichlet(0.3)`` that drifts along the timeline from
  ``θ_start`` to ``θ_end = (1 - d) θ_start + d θ_new`` (``d ~ U(0.2, 0.8)``, linear in the position).
  Step ``t``'s genre is the previous item's primary genre with probability ``STAY_PROBABILITY``
  (short-term continuity, so order matters), else drawn from ``θ_t``; the item is drawn within that
  genre with weight ``w_i`` (primary) or ``SECONDARY_WEIGHT * w_i`` (secondary), never an item the
  user already rated (an exhausted genre falls back to all unrated items by popularity).
* ratings 1–5 rise with the match between the item's genres and ``θ_t``; timestamps increase along
  each sequence (about 10 % of consecutive pairs share a timestamp, never among the last three).
* about ``preference_share`` of users get a preference text naming the top genres of ``θ_end``
  and their moods (never an item).

:func:`oracle_next_item_scores` turns ``truth/latent.npz`` into the true probability of every item
being each user's test target given their test history: the ceiling a model can approach.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import re
import warnings
import zipfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from harness.data import Dataset, DatasetSpec, register_dataset
from harness.data.sequences import (
    TIE_ORDERS,
    build_sequences,
    check_sequence_options,
    files_by_stem,
    history_texts,
    k_core,
    leave_one_out_dataset,
)
from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = [
    "read_movielens",
    "generate_movielens",
    "TIE_ORDERS",
    "oracle_next_item_scores",
    "GENRES",
    "STANDARD_GENRES",
    "ML100K_GENRES",
    "HISTORY_PREFERENCE_TEMPLATE",
    "FALLBACK_DESCRIPTION_TEMPLATE",
]

# The 18 ml-1m genres, in the ml-1m README's order.
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Every genre name a release uses, in the order meta["genres"] lists them ("Children" is the csv releases' name).
STANDARD_GENRES = (*GENRES[:4], "Children", *GENRES[4:], "IMAX", "unknown", "(no genres listed)")
# u.item's 19 genre flags, in file order.
ML100K_GENRES = ("unknown", *GENRES)

HISTORY_PREFERENCE_TEMPLATE = "Likes {genres}. Recently watched: {titles}."
FALLBACK_DESCRIPTION_TEMPLATE = "{title}. Genres: {genres}."
PREFERENCE_GENRES = 3  # genres named by a history-built preference text
PREFERENCE_TITLES = 5  # titles named by a history-built preference text
_NO_GENRE = "(no genres listed)"

_FILES = {
    "ml-1m": {"ratings": "ratings.dat", "movies": "movies.dat", "users": "users.dat"},
    "ml-100k": {"ratings": "u.data", "movies": "u.item", "users": "u.user"},
    "csv": {"ratings": "ratings.csv", "movies": "movies.csv", "links": "links.csv"},
}
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)$")
_INTEGER = r"\s*[+-]?\d+\s*"

# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


def read_movielens(
    root: str | Path,
    *,
    min_rating: float | None = None,
    min_user_interactions: int = 5,
    min_item_interactions: int = 5,
    sampled_negatives: int = 100,
    negative_sampling: str = "uniform",
    tie_order: str = "file",
) -> Dataset:
    """Read a MovieLens release (ml-100k, ml-1m or csv) as leave-one-out sequences; bad input is a :class:`HarnessError`.

    The format is detected from the files present (module docstring). ``train`` and ``test`` hold
    one row per user, sorted by ``user_id``: ``user_id``, ``history`` (int64 array of item ids,
    oldest first), ``target`` and ``user_text``. ``meta`` holds ``n_items`` (items + padding),
    the ``items`` and ``users`` tables (raw ids, titles, genres, descriptions, poster paths,
    demographics), the ``genres`` present, the ``format`` and ``stats`` (counts of what was read,
    merged, filtered and matched). Side-file ids outside the final catalogue or user set, users
    and movies removed by the filters and an empty ``posters/`` folder are counted and warned
    about, not errors.

    Args:
        root: the data directory.
        min_rating: ratings ``>= min_rating`` become interactions; ``None`` (default) keeps all.
        min_user_interactions: users with fewer interactions are removed (default 5); at least 3,
            since leave-one-out needs a history, a validation item and a test item.
        min_item_interactions: movies with fewer interactions are removed (default 5); removal
            repeats until every user and movie meets its threshold.
        sampled_negatives: negatives per target in the ``_sampled`` evaluation protocol (default 100).
        negative_sampling: ``"uniform"`` (default) or ``"popularity"``: how those negatives are drawn
            (see :class:`harness.tasks.recommendation.SampledProtocol`).
        tie_order: order of one user's interactions with equal timestamps: ``"file"`` (default, the
            ratings file's row order) or ``"item_id"`` (ascending raw movie id).
    """
    root = Path(root)
    check_sequence_options(min_rating, min_user_interactions, min_item_interactions, sampled_negatives,
                           negative_sampling, tie_order)  # fmt: skip
    fmt, paths = _detect_format(root)
    ratings_path = paths["ratings"]

    # raw ratings and the catalogue
    users, items, ratings, timestamps = _read_ratings(ratings_path, fmt)
    movies = _read_movies(paths["movies"], fmt)
    unknown = ~np.isin(items, movies["movie_id"].to_numpy())
    if unknown.any():
        examples = ", ".join(map(str, pd.unique(items[unknown])[:3]))
        raise HarnessError(
            f"{ratings_path}: {unknown.sum()} ratings reference movie ids missing from {paths['movies'].name} "
            f"(e.g. {examples}); every rated movie needs a row there."
        )

    # merged, thresholded, k-core filtered, time-ordered sequences
    built = build_sequences(users, items, ratings, timestamps, source=ratings_path, min_rating=min_rating,
                            min_user_interactions=min_user_interactions, min_item_interactions=min_item_interactions,
                            tie_order=tie_order, item_noun="movie")  # fmt: skip
    if built.report:
        warnings.warn(f"{ratings_path.name}: {built.report}", UserWarning, stacklevel=2)
    raw_users, raw_items, sequences, stats = built.raw_users, built.raw_items, built.sequences, built.stats

    # side tables: catalogue, users, texts
    catalogue = movies.set_index("movie_id").loc[raw_items].reset_index()
    catalogue.insert(0, "item_id", np.arange(1, len(raw_items) + 1, dtype=np.int64))
    if "links" in paths:
        catalogue = _attach_links(catalogue, paths["links"])
    catalogue["description"] = _descriptions(root, catalogue, stats)
    catalogue["poster_path"] = pd.Series(_posters(root, catalogue, stats), dtype=object)  # None: no poster
    catalogue = catalogue[[
        "item_id", "movie_id", "title", "year", "genres", "description", "poster_path",
        *[c for c in ("imdb_id", "tmdb_id") if c in catalogue],
    ]]  # fmt: skip
    genres = _genres_present(catalogue["genres"])
    profiles = _read_users(paths["users"], fmt, raw_users, stats) if "users" in paths else None
    user_table, texts = _user_texts(root, raw_users, sequences, catalogue, genres, stats)
    if profiles is not None:
        user_table = user_table.join(profiles.reset_index(drop=True))

    meta = {
        "n_items": len(raw_items) + 1,
        "items": catalogue,
        "users": user_table,
        "genres": genres,
        "format": fmt,
        "stats": {k: int(v) for k, v in stats.items()},
        "sampled_negatives": int(sampled_negatives),
        "negative_sampling": negative_sampling,
        "tie_order": tie_order,
    }
    options = {"min_rating": min_rating, "min_user_interactions": int(min_user_interactions),
               "min_item_interactions": int(min_item_interactions), "tie_order": tie_order}  # fmt: skip
    return leave_one_out_dataset("movielens", sequences, texts, root, meta, options)


def _detect_format(root: Path) -> tuple[str, dict[str, Path]]:
    if not root.is_dir():
        raise HarnessError(f"Data directory {str(root)!r} does not exist.")
    for fmt, names in _FILES.items():
        if (root / names["ratings"]).is_file():
            if not (root / names["movies"]).is_file():
                raise HarnessError(
                    f"{root}: found {names['ratings']} ({fmt} format) but not {names['movies']}; "
                    "the movie file is needed for titles and genres."
                )
            paths = {role: root / name for role, name in names.items() if (root / name).is_file()}
            return fmt, paths
    expected = "; ".join(f"{', '.join(names.values())} ({fmt})" for fmt, names in _FILES.items())
    raise HarnessError(f"{root}: no MovieLens ratings file found; expected one of: {expected}.")


# ---- parsing -----------------------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not {encoding} text ({_one_line(exc)}).") from exc


def _split_lines(path: Path, sep: str, fields: tuple[str, ...], encoding: str):
    """Lines of a simple delimited file (no quoting, no header) → (list of field lists, 1-based line numbers)."""
    lines = _read_text(path, encoding).splitlines()
    numbers = [n for n, line in enumerate(lines, 1) if line.strip()]
    rows = [lines[n - 1].split(sep) for n in numbers]
    for n, row in zip(numbers, rows):
        if len(row) != len(fields):
            raise HarnessError(
                f"{path}, line {n}: expected {len(fields)} fields {sep.join(fields)}, got {len(row)} "
                f"({_clip(lines[n - 1])!r})."
            )
    return rows, numbers


def _read_ratings(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user, movie, rating, timestamp)`` arrays of a ratings file, validated line by line.

    Reads the whole file as text and lets pandas' C parser convert it (about a second for
    ml-1m's million lines); field counts are checked first so errors name the line.
    """
    sep, encoding, header = {"ml-1m": ("::", "latin-1", False), "ml-100k": ("\t", "latin-1", False),
                             "csv": (",", "utf-8", True)}[fmt]  # fmt: skip
    fields = (
        ("userId", "movieId", "rating", "timestamp") if fmt == "csv" else ("UserID", "MovieID", "Rating", "Timestamp")
    )
    text = _read_text(path, encoding)
    lines = text.splitlines()
    columns = list(range(4))
    if header:
        names = [c.strip() for c in (lines[0].split(sep) if lines else [])]
        missing = [f for f in fields if f not in names]
        if missing:
            raise HarnessError(
                f"{path}: header must name {', '.join(fields)}; missing {', '.join(missing)} "
                f"(header: {_clip(lines[0]) if lines else 'empty file'!r})."
            )
        columns = [names.index(f) for f in fields]
        n_fields, lines = len(names), lines[1:]
    else:
        n_fields = 4
    # field counts, line by line (a cheap count of separators); blank lines are skipped
    first = 2 if header else 1
    numbers = np.array([n for n, line in enumerate(lines, first) if line.strip()], dtype=np.int64)
    if not len(numbers):
        raise HarnessError(f"{path}: no ratings; expected one line per rating {sep.join(fields)}.")
    if len(numbers) < len(lines):
        lines = [lines[n - first] for n in numbers]
    counts = np.fromiter((line.count(sep) for line in lines), dtype=np.int64, count=len(lines))
    bad = counts != n_fields - 1
    if bad.any():
        i = int(np.argmax(bad))
        raise HarnessError(
            f"{path}, line {numbers[i]}: expected {n_fields} fields {sep.join(fields)}, got {counts[i] + 1} "
            f"({_clip(lines[i])!r})."
        )
    body = "\n".join(lines)
    try:
        frame = pd.read_csv(
            io.StringIO(body.replace("::", "\t") if sep == "::" else body), sep="\t" if sep == "::" else sep,
            header=None, names=range(n_fields), usecols=columns, na_filter=False, quoting=csv.QUOTE_NONE,
            skip_blank_lines=False, engine="c",
        )  # fmt: skip
    except pd.errors.ParserError as exc:  # e.g. a tab inside a "::" line
        raise HarnessError(f"{path}: not readable as {sep!r}-separated fields ({_one_line(exc)}).") from exc
    users = _integers(frame[columns[0]], path, numbers, fields[0])
    items = _integers(frame[columns[1]], path, numbers, fields[1])
    ratings = _numbers(frame[columns[2]], path, numbers, fields[2])
    timestamps = _integers(frame[columns[3]], path, numbers, fields[3])
    return users, items, ratings, timestamps


def _integers(column: pd.Series, path: Path, numbers, what: str) -> np.ndarray:
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(np.int64)
    text = column.astype(str)
    bad = ~text.str.fullmatch(_INTEGER)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise HarnessError(f"{path}, line {numbers[i]}: {what} must be an integer, got {text.iloc[i]!r}.")
    return text.astype(np.int64).to_numpy()


def _numbers(column: pd.Series, path: Path, numbers, what: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise HarnessError(f"{path}, line {numbers[i]}: {what} must be a number, got {column.iloc[i]!r}.")
    return values


def _read_movies(path: Path, fmt: str) -> pd.DataFrame:
    """``movie_id, title, year, genres`` of the movie file (one row per movie)."""
    if fmt == "ml-1m":
        rows, numbers = _split_lines(path, "::", ("MovieID", "Title", "Genres"), "latin-1")
        ids = [_integer(r[0], path, n, "MovieID") for r, n in zip(rows, numbers)]
        raw_titles, genres, dates = [r[1] for r in rows], [r[2].strip() for r in rows], None
    elif fmt == "ml-100k":
        fields = ("movie id", "title", "release date", "video release date", "IMDb URL", *ML100K_GENRES)
        rows, numbers = _split_lines(path, "|", fields, "latin-1")
        ids = [_integer(r[0], path, n, "movie id") for r, n in zip(rows, numbers)]
        raw_titles, dates, genres = [r[1] for r in rows], [r[2] for r in rows], []
        for row, n in zip(rows, numbers):
            flags = [f.strip() for f in row[5:]]
            if any(f not in ("0", "1") for f in flags):
                raise HarnessError(f"{path}, line {n}: genre flags must be 0 or 1, got {'|'.join(flags)!r}.")
            genres.append("|".join(g for g, f in zip(ML100K_GENRES, flags) if f == "1"))
    else:
        table, numbers = _read_csv_rows(path, ("movieId", "title", "genres"))
        ids = [_integer(v, path, n, "movieId") for v, n in zip(table["movieId"], numbers)]
        raw_titles, genres, dates = table["title"], [g.strip() for g in table["genres"]], None
    if not ids:
        raise HarnessError(f"{path}: no movies; expected one line per movie.")
    titles, years = zip(*(_split_title(t) for t in raw_titles))
    years = np.array(years, dtype=float)
    if dates is not None:  # ml-100k: the release date's year where the title has none
        from_dates = pd.to_datetime(pd.Series(dates).str.strip(), format="%d-%b-%Y", errors="coerce").dt.year
        years = np.where(np.isnan(years), from_dates.to_numpy(dtype=float), years)
    movies = pd.DataFrame({"movie_id": np.array(ids, dtype=np.int64), "title": list(titles), "year": years,
                           "genres": list(genres)})  # fmt: skip
    duplicated = movies["movie_id"][movies["movie_id"].duplicated()]
    if len(duplicated):
        raise HarnessError(
            f"{path}: {len(duplicated)} duplicate movie ids (e.g. {duplicated.iloc[0]}); each movie needs one row."
        )
    return movies


def _read_csv_rows(path: Path, required: tuple[str, ...]) -> tuple[dict[str, list[str]], list[int]]:
    """Columns ``required`` of a quoted CSV with a header, and each row's line number."""
    text = _read_text(path, "utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [c.strip() for c in next(reader)]
    except StopIteration:
        raise HarnessError(f"{path}: file is empty; expected a header row {','.join(required)}.") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise HarnessError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; columns present: {', '.join(header)}."
        )
    index = [header.index(c) for c in required]
    columns: dict[str, list[str]] = {c: [] for c in required}
    numbers = []
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise HarnessError(
                    f"{path}, line {reader.line_num}: expected {len(header)} fields {','.join(header)}, got {len(row)}."
                )
            numbers.append(reader.line_num)
            for c, i in zip(required, index):
                columns[c].append(row[i])
    except csv.Error as exc:
        raise HarnessError(f"{path}, line {reader.line_num}: not readable CSV ({_one_line(exc)}).") from exc
    return columns, numbers


def _integer(value: str, path: Path, line: int, what: str) -> int:
    if not re.fullmatch(_INTEGER, value):
        raise HarnessError(f"{path}, line {line}: {what} must be an integer, got {value!r}.")
    return int(value)


def _split_title(raw: str) -> tuple[str, float]:
    """``"Amélie (2001)"`` → ``("Amélie", 2001.0)``; a title without a year keeps NaN."""
    raw = raw.strip()
    match = _TITLE_YEAR.match(raw)
    if match and match["title"]:
        return match["title"], float(match["year"])
    return raw, np.nan


def _read_users(path: Path, fmt: str, raw_users: np.ndarray, stats: dict) -> pd.DataFrame:
    """``gender, age, occupation`` of each final user (raw id order); users missing from the file get NaN."""
    if fmt == "ml-1m":
        fields = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
        rows, numbers = _split_lines(path, "::", fields, "latin-1")
        order = (1, 2, 3)
    else:
        fields = ("user id", "age", "gender", "occupation", "zip code")
        rows, numbers = _split_lines(path, "|", fields, "latin-1")
        order = (2, 1, 3)
    ids = [_integer(r[0], path, n, fields[0]) for r, n in zip(rows, numbers)]
    ages = [_integer(r[order[1]], path, n, fields[order[1]]) for r, n in zip(rows, numbers)]
    occupations = [r[order[2]].strip() for r in rows]
    if fmt == "ml-1m":  # ml-1m codes occupations as integers, ml-100k names them
        occupations = [_integer(o, path, n, "Occupation") for o, n in zip(occupations, numbers)]
    table = pd.DataFrame(
        {"gender": [r[order[0]].strip() for r in rows], "age": ages, "occupation": occupations}, index=ids
    )
    table = table[~table.index.duplicated(keep="last")]
    missing = ~np.isin(raw_users, table.index.to_numpy())
    stats["users_missing_from_user_file"] = int(missing.sum())
    if missing.any():
        warnings.warn(
            f"{path.name}: {missing.sum()} of {len(raw_users)} users have no row (e.g. "
            f"{', '.join(map(str, raw_users[missing][:3]))}); their gender, age and occupation are missing.",
            UserWarning,
            stacklevel=3,
        )
    return table.reindex(raw_users)


def _attach_links(catalogue: pd.DataFrame, path: Path) -> pd.DataFrame:
    table, numbers = _read_csv_rows(path, ("movieId", "imdbId", "tmdbId"))
    ids = [_integer(v, path, n, "movieId") for v, n in zip(table["movieId"], numbers)]
    links = {}
    for column, name in (("imdbId", "imdb_id"), ("tmdbId", "tmdb_id")):
        values = [None if not v.strip() else _integer(v, path, n, column) for v, n in zip(table[column], numbers)]
        links[name] = pd.Series(values, index=ids, dtype="Int64")
    links = pd.DataFrame(links)
    links = links[~links.index.duplicated(keep="last")].reindex(catalogue["movie_id"].to_numpy())
    return catalogue.assign(imdb_id=links["imdb_id"].to_numpy(), tmdb_id=links["tmdb_id"].to_numpy())


# ---- side files ----------------------------------------------------------------------------------


def _descriptions(root: Path, catalogue: pd.DataFrame, stats: dict) -> list[str]:
    """Each item's description from the side file, else :data:`FALLBACK_DESCRIPTION_TEMPLATE`."""
    json_path, csv_path = root / "descriptions.json", root / "descriptions.csv"
    texts: dict[str, str] = {}
    path = None
    if json_path.is_file() and csv_path.is_file():
        raise HarnessError(f"{root}: both descriptions.json and descriptions.csv exist; keep one.")
    if json_path.is_file():
        path, texts = json_path, _read_json_texts(json_path, "movieId")
    elif csv_path.is_file():
        path = csv_path
        table, _ = _read_csv_rows(csv_path, ("movieId", "description"))
        texts = dict(zip((k.strip() for k in table["movieId"]), table["description"]))
    known = _id_keys(catalogue["movie_id"])
    found = [texts.get(key, "").strip() for key in known]
    stats["descriptions_from_file"] = sum(map(bool, found))
    stats["unknown_description_ids"] = _warn_unknown(path, set(texts) - set(known), "movie ids", "catalogue")
    return [text or _fallback_description(title, genres) for text, title, genres in
            zip(found, catalogue["title"], catalogue["genres"])]  # fmt: skip


def _fallback_description(title: str, genres: str) -> str:
    """:data:`FALLBACK_DESCRIPTION_TEMPLATE`; a movie without genres gets ``"{title}."``."""
    names = ", ".join(g for g in genres.split("|") if g and g != _NO_GENRE)
    return FALLBACK_DESCRIPTION_TEMPLATE.format(title=title, genres=names) if names else f"{title}."


def _posters(root: Path, catalogue: pd.DataFrame, stats: dict) -> list[str | None]:
    """Absolute path of each item's poster (existence only, not decoded), else ``None``."""
    folder = root / "posters"
    paths, unknown = files_by_stem(folder, _id_keys(catalogue["movie_id"]))
    stats["posters_found"] = stats["unknown_poster_ids"] = 0
    if not folder.is_dir():
        return paths
    stats["posters_found"] = sum(p is not None for p in paths)
    stats["unknown_poster_ids"] = _warn_unknown(folder, unknown, "poster files", "catalogue")
    if not stats["posters_found"]:
        warnings.warn(
            f"{folder}: no posters were found for the {len(catalogue)} movies (expected posters/<movieId>.jpg); "
            "the image modality will be masked.",
            UserWarning,
            stacklevel=3,
        )
    return paths


def _user_texts(root: Path, raw_users: np.ndarray, sequences, catalogue: pd.DataFrame, genres: list[str],
                stats: dict) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """Each user's preference text: from ``user_preferences.json``, else built from the training history."""
    path = root / "user_preferences.json"
    texts = _read_json_texts(path, "userId") if path.is_file() else {}
    known = _id_keys(raw_users)
    given = [texts.get(key, "").strip() for key in known]
    stats["preferences_from_file"] = sum(map(bool, given))
    stats["unknown_preference_ids"] = _warn_unknown(path if path.is_file() else None, set(texts) - set(known),
                                                    "user ids", "users left after filtering")  # fmt: skip
    built = _history_preferences([s[:-2] for s in sequences], catalogue, genres)
    table = pd.DataFrame({
        "user_id": np.arange(1, len(raw_users) + 1, dtype=np.int64),
        "raw_user_id": raw_users.astype(np.int64),
        "preference_source": ["file" if text else "history" for text in given],
    })  # fmt: skip
    return table, [text or fallback for text, fallback in zip(given, built)]


def _history_preferences(histories, catalogue: pd.DataFrame, genres: list[str]) -> list[str]:
    """:data:`HISTORY_PREFERENCE_TEMPLATE` filled from each training history (``s_1 .. s_{n-2}``)."""
    return history_texts(histories, [text.split("|") for text in catalogue["genres"]], list(catalogue["title"]),
                         [g for g in genres if g != _NO_GENRE], HISTORY_PREFERENCE_TEMPLATE,
                         any_genre="movies of any genre", n_genres=PREFERENCE_GENRES,
                         n_titles=PREFERENCE_TITLES)  # fmt: skip


def _read_json_texts(path: Path, key_name: str) -> dict[str, str]:
    try:
        texts = json.loads(_read_text(path, "utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({_one_line(exc)}).") from exc
    if not isinstance(texts, dict):
        raise HarnessError(f'{path}: expected a JSON object {{"<{key_name}>": "text"}}, got {type(texts).__name__}.')
    for key, value in texts.items():
        if not isinstance(value, str):
            raise HarnessError(f"{path}: the value for {key!r} must be a string, got {type(value).__name__}.")
    return {str(k).strip(): v for k, v in texts.items()}


def _id_keys(ids) -> list[str]:
    return [str(int(i)) for i in ids]


def _warn_unknown(path: Path | None, unknown: set[str], what: str, where: str) -> int:
    if unknown and path is not None:
        examples = ", ".join(repr(k) for k in sorted(unknown, key=lambda k: (len(k), k))[:3])
        warnings.warn(
            f"{path.name}: {len(unknown)} {what} are not in the {where} (e.g. {examples}); they are ignored.",
            UserWarning,
            stacklevel=4,
        )
    return len(unknown)


def _genres_present(genres: pd.Series) -> list[str]:
    present = {g for text in genres for g in text.split("|") if g}
    return [g for g in STANDARD_GENRES if g in present] + sorted(present - set(STANDARD_GENRES))


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Generator of the embedded default
# ----------------------------------------------------------------------------------------------

STAY_PROBABILITY = 0.4  # chance that a step's genre is the previous item's primary genre
SECONDARY_WEIGHT = 0.3  # an item's weight within one of its secondary genres, relative to its primary
TASTE_CONCENTRATION = 0.3  # Dirichlet concentration of user tastes over the 18 genres (sparse)
POPULARITY_EXPONENT = 0.8  # item popularity w_i ∝ (rank_i + 1) ** -POPULARITY_EXPONENT
TIE_SHARE = 0.1  # share of a user's consecutive ratings that share a timestamp
FIRST_TIMESTAMP, LAST_TIMESTAMP = 956703932, 1046454590  # ml-1m's range, 2000-04-25 .. 2003-02-28
MIN_LENGTH = 20  # ml-1m users have at least 20 ratings

# Relative number of ml-1m movies listing each of GENRES: the primary-genre distribution of items.
_GENRE_SHARE = np.array([503, 283, 105, 251, 1200, 211, 127, 1603, 68, 44, 343, 114, 106, 471, 276, 492, 143, 68],
                        dtype=float)  # fmt: skip
# Poster layout of each genre cluster, and each genre's cluster.
LAYOUTS = ("stripes", "bars", "circles")
_CLUSTER = {
    **dict.fromkeys(("Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western"), 0),
    **dict.fromkeys(("Crime", "Documentary", "Drama", "Film-Noir", "Horror", "Mystery"), 1),
    **dict.fromkeys(("Animation", "Children's", "Comedy", "Fantasy", "Musical", "Romance"), 2),
}
_TITLE_WORDS = {
    "Action": ("Fury", "Strike", "Bullet", "Velocity", "Siege", "Breakout", "Renegade", "Firestorm", "Vendetta"),
    "Adventure": ("Quest", "Voyage", "Expedition", "Treasure", "Horizon", "Jungle", "Odyssey", "Summit", "Compass"),
    "Animation": ("Toon", "Paper Moon", "Doodle", "Pixel", "Whiskers", "Puddle", "Sprout", "Lantern", "Bubbles"),
    "Children's": ("Puppy", "Treehouse", "Lullaby", "Kite", "Sandbox", "Playground", "Bedtime", "Balloon", "Teddy"),
    "Comedy": ("Mixup", "Roommates", "Blunder", "Pranks", "Road Trip", "Hiccup", "Shenanigans", "Bachelor", "Oops"),
    "Crime": ("Heist", "Alibi", "Mob", "Racket", "Getaway", "Ransom", "Syndicate", "Hustle", "Snitch"),
    "Documentary": ("Truth", "Chronicle", "Portrait", "Witness", "Record", "Frontline", "Archive", "Voices", "Inside"),
    "Drama": ("Silence", "Promise", "Letters", "Winter", "Homecoming", "Inheritance", "Tides", "Ashes", "Grace"),
    "Fantasy": ("Dragon", "Sorcerer", "Kingdom", "Spellbound", "Amulet", "Faerie", "Throne", "Myth", "Runes"),
    "Film-Noir": ("Shadow", "Dame", "Rain", "Nightfall", "Smoke", "Double Cross", "Neon", "Dead End", "Gin"),
    "Horror": ("Haunting", "Curse", "Crypt", "Nightmare", "Blood", "Possession", "Hollow", "Scream", "Grave"),
    "Musical": ("Melody", "Broadway", "Rhythm", "Encore", "Serenade", "Chorus", "Tango", "Showtime", "Jukebox"),
    "Mystery": ("Riddle", "Clue", "Vanishing", "Secret", "Enigma", "Cipher", "Locked Room", "Whisper", "Manor"),
    "Romance": ("Love", "Kiss", "Heart", "Sweetheart", "Valentine", "Moonlight", "Embrace", "Rendezvous", "Paris"),
    "Sci-Fi": ("Galaxy", "Android", "Nebula", "Quantum", "Starship", "Cyborg", "Orbit", "Mars", "Clone"),
    "Thriller": (
        "Pursuit",
        "Hostage",
        "Conspiracy",
        "Deadline",
        "Trap",
        "Paranoia",
        "Stalker",
        "Blackout",
        "Ultimatum",
    ),
    "War": ("Battalion", "Front", "Trenches", "Sniper", "Armistice", "Bunker", "Platoon", "Invasion", "Convoy"),
    "Western": ("Outlaw", "Saloon", "Frontier", "Gunslinger", "Sheriff", "Canyon", "Stagecoach", "Dust", "Bounty"),
}
_ACCENTED_WORDS = ("Amélie", "Niño", "Über", "Café", "Señor", "Déjà Vu", "Noël", "Müller", "Façade", "Mañana",
                   "Crème", "Brücke", "Año", "Señorita", "Fiancée")  # fmt: skip
_PLOT_KEYWORDS = {
    "Action": ("explosive", "car chase", "shootout", "mercenary", "rescue mission", "hand-to-hand combat"),
    "Adventure": ("uncharted map", "lost city", "perilous journey", "ancient treasure", "shipwreck", "wild river"),
    "Animation": ("hand-drawn", "talking animals", "colourful world", "animated", "magical toys", "cartoon"),
    "Children's": ("family-friendly", "school friends", "lost puppy", "birthday party", "kind-hearted", "bedtime"),
    "Comedy": ("hilarious", "mistaken identity", "slapstick", "awkward dinner", "witty banter", "chaotic wedding"),
    "Crime": ("bank robbery", "corrupt cop", "crime boss", "detective", "undercover", "money laundering"),
    "Documentary": ("true story", "interviews", "archival footage", "real events", "investigation", "first-hand"),
    "Drama": ("heartbreaking", "family secrets", "grief", "redemption", "small town", "coming of age"),
    "Fantasy": ("enchanted forest", "ancient prophecy", "wizard", "magic sword", "mythical creatures", "spell"),
    "Film-Noir": ("femme fatale", "rain-soaked streets", "private eye", "double-cross", "smoky bar", "fatalistic"),
    "Horror": ("haunted house", "possessed", "cursed", "terrifying", "blood-soaked", "something in the dark"),
    "Musical": ("song and dance", "show tunes", "big stage", "singing", "choreography", "opening night"),
    "Mystery": ("whodunit", "missing heiress", "hidden clues", "locked room", "strange disappearance", "puzzle"),
    "Romance": ("love story", "first kiss", "star-crossed lovers", "second chance at love", "wedding", "longing"),
    "Sci-Fi": ("spaceship", "distant planet", "time travel", "artificial intelligence", "alien signal", "robot"),
    "Thriller": ("race against time", "conspiracy", "kidnapping", "paranoid", "cat-and-mouse", "ticking bomb"),
    "War": ("battlefield", "soldiers", "occupied village", "resistance fighters", "front line", "wartime"),
    "Western": ("frontier town", "cattle drive", "gunfight", "outlaw gang", "desert trail", "saloon showdown"),
}
_MOODS = {
    "Action": "explosive", "Adventure": "adventurous", "Animation": "playful", "Children's": "wholesome",
    "Comedy": "funny", "Crime": "gritty", "Documentary": "eye-opening", "Drama": "emotional", "Fantasy": "magical",
    "Film-Noir": "moody", "Horror": "scary", "Musical": "uplifting", "Mystery": "puzzling", "Romance": "romantic",
    "Sci-Fi": "mind-bending", "Thriller": "suspenseful", "War": "harrowing", "Western": "rugged",
}  # fmt: skip
_SUBJECTS = ("a retired teacher", "two estranged sisters", "a young farmer", "an ambitious chef", "a night-shift nurse",
             "a washed-up boxer", "a lonely widower", "three old friends", "a stubborn mayor", "a runaway teenager",
             "a travelling salesman", "a small-town librarian")  # fmt: skip
_ACTIONS = ("must face the past", "tries to get home", "stumbles onto a secret", "makes one last bet",
            "is given a second chance", "goes looking for answers", "takes an unexpected job",
            "refuses to give up")  # fmt: skip
_FILLER = ("Shot on location over three summers.", "Featuring an ensemble cast.", "Based on a novel.",
           "The director's second feature.", "Restored from the original negative.", "With an original score.",
           "Told over a single week.", "Winner of a festival audience award.")  # fmt: skip
_PREFERENCE_TEMPLATES = (
    "My favourite genres are {g1} and {g2}. I enjoy {m1} films.",
    "Lately I'm in the mood for something {m1}: mostly {g1}, sometimes {g2}.",
    "Big fan of {g1} movies, and I like a good {g2} too. Not into {worst}.",
    "I watch a lot of {g1}; give me anything {m1} or {m2}.",
)  # fmt: skip
_AGES = (1, 18, 25, 35, 45, 50, 56)  # ml-1m age codes


def generate_movielens(
    root: str | Path,
    seed: int = 0,
    *,
    n_users: int = 1000,
    n_items: int = 1500,
    mean_length: float = 100,
    image_size: int = 64,
    preference_share: float = 0.5,
) -> None:
    """Write a deterministic ml-1m-format directory with the planted tastes of the module docstring.

    Files: ``ratings.dat``, ``movies.dat``, ``users.dat`` (ml-1m format, latin-1), ``posters/<movieId>.jpg``,
    ``descriptions.json``, ``user_preferences.json``, ``README.md`` (the signal and the parameters)
    and ``truth/latent.npz`` (the latent tastes, item genres and popularity, drift; not part of the
    format, read by :func:`oracle_next_item_scores`). Posters, descriptions and preference texts
    exist for the users and movies that survive the reader's default 5-core filter (about 2 % of
    posters and 8 % of descriptions are left out on purpose), so the default read warns about
    nothing. The same arguments give byte-identical files.

    Args:
        root: directory to write into (created).
        seed: seeds every draw.
        n_users: number of users (raw ids ``1 .. n_users``).
        n_items: number of movies (raw ids ascending with gaps, as in ml-1m).
        mean_length: mean number of ratings per user before clipping; lengths are lognormal,
            clipped to ``[20, n_items // 3]``.
        image_size: poster side in pixels (square).
        preference_share: share of users given a preference text.
    """
    _check_generator_args(n_users, n_items, mean_length, image_size, preference_share)
    rng = np.random.default_rng(seed)
    n_genres = len(GENRES)

    # items: genres, popularity, ids
    primary = rng.choice(n_genres, size=n_items, p=_GENRE_SHARE / _GENRE_SHARE.sum())
    secondary = []
    for g in primary:
        share = _GENRE_SHARE.copy()
        share[g] = 0
        k = int(rng.choice(3, p=[0.35, 0.45, 0.2]))
        secondary.append([int(s) for s in rng.choice(n_genres, size=k, replace=False, p=share / share.sum())])
    genre_weight = np.zeros((n_items, n_genres))
    genre_weight[np.arange(n_items), primary] = 1.0
    for i, extra in enumerate(secondary):
        genre_weight[i, extra] = SECONDARY_WEIGHT
    popularity = (rng.permutation(n_items) + 1.0) ** -POPULARITY_EXPONENT
    popularity /= popularity.sum()
    movie_ids = np.sort(rng.choice(np.arange(1, 2 * n_items + 100), size=n_items, replace=False)).astype(np.int64)

    # users: drifting sparse tastes, sequence lengths
    taste_start = rng.dirichlet(np.full(n_genres, TASTE_CONCENTRATION), size=n_users)
    drift = rng.uniform(0.2, 0.8, size=n_users)
    taste_new = rng.dirichlet(np.full(n_genres, TASTE_CONCENTRATION), size=n_users)
    taste_end = (1 - drift[:, None]) * taste_start + drift[:, None] * taste_new
    sigma = 0.75
    lengths = np.exp(rng.normal(np.log(mean_length) - sigma**2 / 2, sigma, size=n_users))
    lengths = np.clip(np.rint(lengths), MIN_LENGTH, n_items // 3).astype(np.int64)

    # sequences, ratings, timestamps
    sequences = [_draw_sequence(rng, n, taste_start[u], taste_end[u], primary, genre_weight, popularity)
                 for u, n in enumerate(lengths)]  # fmt: skip
    pop_z = (np.log(popularity) - np.log(popularity).mean()) / np.log(popularity).std()
    ratings, stamps = [], []
    for u, sequence in enumerate(sequences):
        n = len(sequence)
        f = np.arange(n) / (n - 1)
        theta = (1 - f)[:, None] * taste_start[u] + f[:, None] * taste_end[u]
        match = np.minimum((theta * genre_weight[sequence]).sum(axis=1) / theta.max(axis=1), 1.0)
        score = 1.6 + 3.0 * match + 0.25 * pop_z[sequence] + 0.7 * rng.standard_normal(n)
        ratings.append(np.clip(np.rint(score), 1, 5).astype(np.int64))
        stamps.append(_timestamps(rng, n))

    # who gets side texts and posters: the survivors of the reader's default 5-core
    user_col = np.repeat(np.arange(n_users), lengths)
    item_col = np.concatenate(sequences)
    keep = k_core(user_col, item_col, 5, 5)
    kept_users, kept_items = np.unique(user_col[keep]), np.unique(item_col[keep])

    root = Path(root)
    (root / "posters").mkdir(parents=True, exist_ok=True)
    (root / "truth").mkdir(exist_ok=True)
    titles = _make_titles(rng, primary, secondary)
    with open(root / "movies.dat", "w", encoding="latin-1", newline="\n") as out:
        for movie_id, title, g, extra in zip(movie_ids, titles, primary, secondary):
            out.write(f"{movie_id}::{title}::{'|'.join(GENRES[k] for k in [g, *extra])}\n")
    with open(root / "ratings.dat", "w", encoding="latin-1", newline="\n") as out:
        for u, (sequence, rating, stamp) in enumerate(zip(sequences, ratings, stamps)):
            for k in rng.permutation(len(sequence)):  # ml-1m files are grouped by user, not time-ordered
                out.write(f"{u + 1}::{movie_ids[sequence[k]]}::{rating[k]}::{stamp[k]}\n")
    genders = np.where(rng.uniform(size=n_users) < 0.72, "M", "F")
    ages, occupations = rng.choice(_AGES, size=n_users), rng.integers(0, 21, size=n_users)
    zips = rng.integers(1000, 99999, size=n_users)
    with open(root / "users.dat", "w", encoding="latin-1", newline="\n") as out:
        for u in range(n_users):
            out.write(f"{u + 1}::{genders[u]}::{ages[u]}::{occupations[u]}::{zips[u]:05d}\n")

    with_poster = kept_items[rng.uniform(size=len(kept_items)) >= 0.02]
    for i in with_poster:
        poster = _render_poster(rng, image_size, int(primary[i]), secondary[i])
        poster.save(root / "posters" / f"{movie_ids[i]}.jpg", "JPEG", quality=90)
    with_text = kept_items[rng.uniform(size=len(kept_items)) >= 0.08]
    plots = {str(movie_ids[i]): _plot_text(rng, int(primary[i]), secondary[i]) for i in with_text}
    (root / "descriptions.json").write_text(json.dumps(plots, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    talkers = np.sort(rng.choice(kept_users, size=round(preference_share * len(kept_users)), replace=False))
    preferences = {str(u + 1): _preference_text(rng, taste_end[u]) for u in talkers}
    (root / "user_preferences.json").write_text(
        json.dumps(preferences, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    _write_npz(root / "truth" / "latent.npz", {
        "genres": np.array(GENRES), "item_movie_id": movie_ids, "item_primary": primary.astype(np.int64),
        "item_genre_weight": genre_weight, "item_popularity": popularity,
        "item_layout": np.array([_CLUSTER[GENRES[(s or [g])[0]]] for g, s in zip(primary, secondary)], np.int64),
        "user_raw_id": np.arange(1, n_users + 1, dtype=np.int64), "user_length": lengths,
        "taste_start": taste_start, "taste_end": taste_end, "drift": drift,
        "stay_probability": np.array(STAY_PROBABILITY), "secondary_weight": np.array(SECONDARY_WEIGHT),
    })  # fmt: skip
    (root / "README.md").write_text(
        _readme(seed, n_users, n_items, mean_length, image_size, preference_share, lengths), encoding="utf-8"
    )


def _check_generator_args(n_users, n_items, mean_length, image_size, preference_share) -> None:
    for name, value, least in (("n_users", n_users, 1), ("n_items", n_items, 3 * MIN_LENGTH),
                               ("image_size", image_size, 16)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise HarnessError(f"{name} must be an integer >= {least}, got {value!r}.")
    if isinstance(mean_length, bool) or not isinstance(mean_length, Real) or not mean_length >= MIN_LENGTH:
        raise HarnessError(f"mean_length must be a number >= {MIN_LENGTH}, got {mean_length!r}.")
    if isinstance(preference_share, bool) or not isinstance(preference_share, Real) or not 0 <= preference_share <= 1:
        raise HarnessError(f"preference_share must be a number in [0, 1], got {preference_share!r}.")


def _draw_sequence(rng, n, start, end, primary, genre_weight, popularity) -> np.ndarray:
    """One user's item indexes: genre by continuity or drifting taste, then an unseen item by popularity."""
    f = np.arange(n) / (n - 1)
    theta = (1 - f)[:, None] * start + f[:, None] * end
    cumulative = theta.cumsum(axis=1)
    taste_genre = np.minimum((cumulative < rng.uniform(size=n)[:, None] * cumulative[:, -1:]).sum(axis=1),
                             len(start) - 1)  # fmt: skip
    stay = rng.uniform(size=n) < STAY_PROBABILITY
    picks = rng.uniform(size=n)
    candidates = [np.flatnonzero(genre_weight[:, g]) for g in range(len(start))]
    weights = [genre_weight[c, g] * popularity[c] for g, c in enumerate(candidates)]
    seen = np.zeros(len(popularity), dtype=bool)
    sequence = np.empty(n, dtype=np.int64)
    for t in range(n):
        g = primary[sequence[t - 1]] if t and stay[t] else taste_genre[t]
        items, w = candidates[g], np.where(seen[candidates[g]], 0.0, weights[g])
        if not w.any():  # every item of the genre is rated: any unrated item, by popularity
            items, w = np.arange(len(popularity)), np.where(seen, 0.0, popularity)
        cumulative = np.cumsum(w)
        j = items[min(int(np.searchsorted(cumulative, picks[t] * cumulative[-1], side="right")), len(items) - 1)]
        seen[j], sequence[t] = True, j
    return sequence


def _timestamps(rng, n: int) -> np.ndarray:
    """Increasing epoch seconds: sessions of quick ratings, hours and days between them, some ties."""
    kind = rng.uniform(size=n - 1)
    gaps = np.where(
        kind < 0.75,
        1 + rng.exponential(90, n - 1),
        np.where(kind < 0.95, rng.exponential(3 * 3600, n - 1), rng.exponential(10 * 86400, n - 1)),
    )
    gaps = np.maximum(np.rint(gaps), 1).astype(np.int64)
    tie = rng.uniform(size=n - 1) < TIE_SHARE
    tie[-2:] = False  # the validation and test items are never tied with what precedes them
    gaps[tie] = 0
    start = rng.integers(FIRST_TIMESTAMP, FIRST_TIMESTAMP + (LAST_TIMESTAMP - FIRST_TIMESTAMP) * 3 // 4)
    return start + np.r_[0, np.cumsum(gaps)]


def _make_titles(rng, primary, secondary) -> list[str]:
    """Unique "Title (year)" strings from genre word lists; ~6 % with a latin-1 accented word."""
    used, titles = set(), []
    for g, extra in zip(primary, secondary):
        words = _TITLE_WORDS[GENRES[g]]
        other = _TITLE_WORDS[GENRES[extra[0]]] if extra else words
        a, b = str(rng.choice(words)), str(rng.choice(other))
        form = int(rng.integers(5))
        title = (f"The {a}", f"{a} {b}" if a != b else a, f"{a} of the {b}", f"Return of the {a}", f"{a} and {b}")[form]
        if rng.uniform() < 0.06:
            title = f"{rng.choice(_ACCENTED_WORDS)} {title}"
        base, k = title, 1
        while title in used:
            k += 1
            title = f"{base} {k}"
        used.add(title)
        if title.startswith("The ") and rng.uniform() < 0.5:
            title = f"{title[4:]}, The"  # as MovieLens writes "Shawshank Redemption, The"
        if rng.uniform() < 0.93:
            year = max(1920, 2000 - int(rng.exponential(12)))
            title = f"{title} ({year})"
        titles.append(title)
    return titles


def _plot_text(rng, primary: int, secondary: list[int]) -> str:
    keywords = rng.choice(_PLOT_KEYWORDS[GENRES[primary]], size=3, replace=False)
    sentences = [
        f"A {keywords[0]} story about {rng.choice(_SUBJECTS)} who {rng.choice(_ACTIONS)}.",
        f"Expect {keywords[1]} and {keywords[2]}.",
        *(f"There is also {rng.choice(_PLOT_KEYWORDS[GENRES[s]])}." for s in secondary),
    ]
    for filler in rng.choice(_FILLER, size=int(rng.integers(1, 3)), replace=False):
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), str(filler))
    return " ".join(sentences)


def _preference_text(rng, taste: np.ndarray) -> str:
    """A statement of the user's current (end-of-timeline) favourite genres and moods; never an item."""
    order = np.argsort(-taste, kind="stable")
    g1, g2, worst = GENRES[order[0]], GENRES[order[1]], GENRES[order[-1]]
    template = str(rng.choice(_PREFERENCE_TEMPLATES))
    return template.format(g1=g1, g2=g2, worst=worst, m1=_MOODS[g1], m2=_MOODS[g2])


def _render_poster(rng, size: int, primary: int, secondary: list[int]) -> Image.Image:
    """Palette from the primary genre, layout from the first secondary genre's cluster, plus noise."""
    hue = (primary / len(GENRES) + rng.uniform(-0.012, 0.012)) % 1.0
    saturation, value = 0.55 + 0.35 * (primary % 2), 0.5 + 0.2 * (primary % 3)
    top = np.array(colorsys.hsv_to_rgb(hue, saturation, min(1.0, value + 0.12)))
    bottom = np.array(colorsys.hsv_to_rgb(hue, saturation, value - 0.15))
    pixels = np.repeat((np.linspace(top, bottom, size) * 255)[:, None, :], size, axis=1).round().astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    accent_genre = secondary[0] if secondary else primary
    accent_hue = (accent_genre / len(GENRES) + (0.0 if secondary else 0.5)) % 1.0
    accent = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(accent_hue, 0.8, 0.95))
    layout = _CLUSTER[GENRES[accent_genre]]
    s = size
    if layout == 0:  # diagonal stripes
        offset = rng.uniform(-0.1, 0.1) * s
        for k in range(3):
            x = (0.15 + 0.3 * k) * s + offset
            draw.polygon([(x, 0), (x + 0.12 * s, 0), (x - 0.3 * s, s), (x - 0.42 * s, s)], fill=accent)
    elif layout == 1:  # vertical bars, like a doorway
        for k in range(int(rng.integers(2, 4))):
            x = rng.uniform(0.05, 0.8) * s
            draw.rectangle((x, 0.1 * s, x + 0.12 * s, 0.9 * s), fill=accent)
    else:  # circles
        for _ in range(int(rng.integers(3, 6))):
            r = rng.uniform(0.06, 0.18) * s
            cx, cy = rng.uniform(0.15, 0.85, 2) * s
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=accent)
    for _ in range(int(rng.integers(3, 8))):  # distractor dots
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, s, 2)
        draw.ellipse((x, y, x + 0.05 * s, y + 0.05 * s), fill=colour)
    grey = int(rng.integers(20, 236))
    draw.rectangle((0.08 * s, 0.86 * s, rng.uniform(0.4, 0.92) * s, 0.95 * s), fill=(grey, grey, grey))
    return image


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so the file is byte-identical across runs."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def _readme(seed, n_users, n_items, mean_length, image_size, preference_share, lengths) -> str:
    return f"""# movielens (generated)

Embedded default of the MovieLens sequential-recommendation competition, written by
`harness.data.movielens.generate_movielens` (seed={seed}, n_users={n_users}, n_items={n_items},
mean_length={mean_length}, image_size={image_size}, preference_share={preference_share}).
{int(lengths.sum())} ratings, {int(lengths.min())} to {int(lengths.max())} per user.

Files (ml-1m format, latin-1): `ratings.dat` (UserID::MovieID::Rating::Timestamp, grouped by user,
not time-ordered), `movies.dat` (MovieID::Title::Genres, primary genre first), `users.dat`
(UserID::Gender::Age::Occupation::Zip-code; demographics are random and carry no signal). Side
files: `posters/<MovieID>.jpg` ({image_size}x{image_size}), `descriptions.json`, `user_preferences.json`.
`truth/latent.npz` holds the latent variables below: it is NOT part of the format, only for the
oracle (`oracle_next_item_scores`) and tests.

Planted signal:

- Items: a primary genre (ml-1m's genre frequencies) and 0-2 secondary genres; popularity
  w ~ (rank + 1)^-{POPULARITY_EXPONENT}; movie ids ascending with gaps.
- Users: taste over the 18 genres, Dirichlet({TASTE_CONCENTRATION}), drifting linearly along the
  sequence from theta_start to theta_end = (1 - d) theta_start + d theta_new, d ~ U(0.2, 0.8).
- Next item: with probability {STAY_PROBABILITY} the genre is the previous item's primary genre,
  else drawn from the current taste; the item is drawn within that genre by popularity (weight
  {SECONDARY_WEIGHT} for items where it is a secondary genre), never one already rated (an exhausted
  genre falls back to all unrated items by popularity).
- Ratings 1-5 rise with the match between the item's genres and the current taste.
- Timestamps increase along each sequence; about {TIE_SHARE:.0%} of consecutive ratings share a
  timestamp (never the last three of a user), so the reader's tie-break (by movie id) is exercised.
- Posters: background hue/saturation/value from the primary genre; layout (stripes, bars,
  circles) from the genre cluster of the first secondary genre (of the primary when none); accent
  colour from the first secondary genre; jitter, distractor dots and a grey caption bar are noise.
- Descriptions: genre-specific plot keywords (3 of the primary genre, 1 per secondary genre) amid
  neutral filler; about 8 % of movies have none (the reader writes "Title. Genres: ...").
- Preference texts (about {preference_share:.0%} of users): the top two genres of theta_end and their
  moods, sometimes the least-liked genre; never an item.

Side files and texts cover the users and movies surviving the reader's default 5-core filter;
about 2 % of those movies have no poster.
"""


# ----------------------------------------------------------------------------------------------
# Oracle
# ----------------------------------------------------------------------------------------------


def oracle_next_item_scores(root: str | Path, dataset: Dataset) -> np.ndarray:
    """True probability of each item being each test row's target, from ``truth/latent.npz``.

    Row ``b`` is ``dataset.test``'s row ``b``, column ``j`` the internal item id ``j`` (column 0,
    the padding id, and the row's history are 0). The probability is the generator's: the
    previous item's primary genre with probability ``STAY_PROBABILITY``, else the user's
    end-of-timeline taste, then an unseen item by popularity within the genre. It conditions on the
    test history as read (a reader filter that removed items makes it approximate). Use it as the
    ceiling of what a model can learn from the sequences.

    Args:
        root: the directory :func:`generate_movielens` wrote.
        dataset: that directory as read by :func:`read_movielens`.
    """
    path = Path(root) / "truth" / "latent.npz"
    if not path.is_file():
        raise HarnessError(f"{path}: not found; oracle scores need a directory written by generate_movielens.")
    with np.load(path) as truth:
        truth = {name: truth[name] for name in truth.files}
    items, users = dataset.meta["items"], dataset.meta["users"].set_index("user_id")["raw_user_id"]
    item_row = _truth_rows(truth["item_movie_id"], items["movie_id"].to_numpy(), path, "movie")
    user_row = _truth_rows(truth["user_raw_id"], users.reindex(dataset.test["user_id"]).to_numpy(), path, "user")
    n_items = int(dataset.meta["n_items"])
    histories = [item_row[np.asarray(h, np.int64) - 1] for h in dataset.test["history"]]

    weights = truth["item_popularity"][:, None] * truth["item_genre_weight"]  # [I_truth, G]
    seen = np.zeros((len(histories), len(truth["item_popularity"])))
    seen[np.repeat(np.arange(len(histories)), [len(h) for h in histories]), np.concatenate(histories)] = 1.0
    unseen_mass = weights.sum(axis=0) - seen @ weights  # [B, G]
    previous = truth["item_primary"][[h[-1] for h in histories]]
    stay = float(truth["stay_probability"])
    genre_p = (1 - stay) * truth["taste_end"][user_row]
    genre_p[np.arange(len(histories)), previous] += stay
    exhausted = unseen_mass <= 1e-15
    per_mass = np.where(exhausted, 0.0, genre_p / np.where(exhausted, 1.0, unseen_mass))
    fallback = (genre_p * exhausted).sum(axis=1) / ((1 - seen) @ truth["item_popularity"])  # [B]
    probability = per_mass @ weights.T + fallback[:, None] * truth["item_popularity"][None, :]
    probability *= 1 - seen
    scores = np.zeros((len(histories), n_items))
    scores[:, 1:] = probability[:, item_row]
    return scores


def _truth_rows(truth_ids: np.ndarray, ids: np.ndarray, path: Path, what: str) -> np.ndarray:
    rows = np.minimum(np.searchsorted(truth_ids, ids), len(truth_ids) - 1)
    missing = truth_ids[rows] != ids
    if missing.any():
        raise HarnessError(
            f"{path}: {missing.sum()} {what} ids of the dataset are not in the truth (e.g. {ids[missing][0]}); "
            "was the dataset read from this directory?"
        )
    return rows


register_dataset(
    DatasetSpec(
        name="movielens",
        task=TaskType.SEQUENTIAL_RECOMMENDATION,
        reader=read_movielens,
        generator=generate_movielens,
        fold_scheme="kfold",
        metric="ndcg@10_full",
        description="MovieLens-style next-movie prediction: rating sequences + posters, plots and preference "
        "texts -> top-N movies per user (NDCG@10, full ranking, leave-one-out).",
    )
)

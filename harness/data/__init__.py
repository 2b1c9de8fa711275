"""Datasets: declared once, read from their standard on-disk format.

A :class:`DatasetSpec` names a dataset, its task type, how to read it and (for the embedded
defaults) how to generate it. Readers return a :class:`Dataset`: typed train/test frames plus
the column roles the core needs (id, target, group) and a content fingerprint that keys caches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from filelock import FileLock

from harness.errors import HarnessError
from harness.tasks import TaskType

__all__ = [
    "Dataset",
    "DatasetSpec",
    "register_dataset",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "frame_fingerprint",
    "create_once",
]


@dataclass
class Dataset:
    """A dataset as the core sees it.

    Rows of ``train`` are the unit that folds split (videos, users, images); ``test`` rows get
    predictions for the submission. Media (images) stay on disk: frames carry their paths.
    """

    name: str
    task: TaskType
    train: pd.DataFrame
    test: pd.DataFrame
    id_col: str
    target_col: str
    root: Path
    group_col: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # reader-specific facts (e.g. reference year)

    media_cols: tuple[str, ...] = ("image_path",)  # columns holding file paths under root
    options: dict[str, Any] = field(default_factory=dict)  # reader options that shape the rows

    @cached_property
    def fingerprint(self) -> str:
        """Hash of both frames, of the side tables and arrays in ``meta`` (e.g. an item catalogue,
        array-backed images), of the media files they point to (relative path, size, mtime) and of
        the reader ``options``.

        Keys fold files and feature caches and is logged with every run: moving the data
        directory keeps it, replacing a thumbnail, changing one pixel of an image array or reading
        with another protocol option (e.g. MovieLens' ``tie_order``) changes it.
        """
        side = [value for _, value in sorted(self.meta.items()) if isinstance(value, pd.DataFrame)]
        arrays = {key: _array_digest(v) for key, v in sorted(self.meta.items()) if isinstance(v, np.ndarray)}
        if arrays:
            side.append(pd.DataFrame({"array": list(arrays), "digest": list(arrays.values())}))
        if self.options:
            side.append(pd.DataFrame({"option": list(self.options), "value": [repr(v) for v in self.options.values()]}))
        return frame_fingerprint(*(self._portable(frame) for frame in (self.train, self.test, *side)))

    def _portable(self, frame: pd.DataFrame) -> pd.DataFrame:
        columns = [c for c in self.media_cols if c in frame.columns]
        if not columns:
            return frame
        return frame.assign(**{c: frame[c].map(self._file_stamp) for c in columns})

    def _file_stamp(self, path: str | None) -> str:
        if path is None or (isinstance(path, float) and path != path):
            return "none"
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return f"{path.name}:missing"
        root = Path(self.root).resolve()
        relative = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else path
        return f"{relative}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one dataset.

    Args:
        name: registry name, also used in fold-file and submission names.
        task: the task type; decides prediction shape, metrics and blending.
        reader: ``reader(root, **options) -> Dataset`` for the standard on-disk format.
        generator: ``generator(root, **options)`` writing an embedded default in exactly
            that format, or ``None`` for datasets that must be supplied by the user.
        fold_scheme: default fold scheme ("kfold", "stratified", "group", ...).
        metric: default metric name (direction comes from the metric itself).
    """

    name: str
    task: TaskType
    reader: Callable[..., Dataset]
    generator: Callable[..., None] | None
    fold_scheme: str
    metric: str
    description: str = ""


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _DATASETS:
        raise ValueError(f"Dataset {spec.name!r} is already registered.")
    _DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    _import_builtin_datasets()
    return sorted(_DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    _import_builtin_datasets()
    if name not in _DATASETS:
        raise HarnessError(
            f"Unknown dataset {name!r}, valid datasets: {', '.join(sorted(_DATASETS))}."
        )
    return _DATASETS[name]


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    data_root: str | Path = "data",
    reader_options: dict[str, Any] | None = None,
    generator_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Dataset:
    """Read dataset ``name`` from ``data_dir``, or from its embedded default.

    With ``data_dir=None`` the embedded default lives in ``<data_root>/<name>``; it is generated
    there on first use (reported through ``log``) with the generator's own fixed seed, so every
    run sees the same data whatever its ``--seed``, and read back through the same reader that
    real data goes through.
    """
    spec = get_dataset_spec(name)
    if data_dir is None:
        if spec.generator is None:
            raise HarnessError(f"Dataset {name!r} has no embedded default; pass --data DIR.")
        data_dir = Path(data_root) / name
        if not data_dir.exists():
            with create_once(data_dir) as missing:
                if missing:  # not generated by another process while this one waited
                    _generate(spec, data_dir, generator_options or {}, log)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise HarnessError(f"Data directory {str(data_dir)!r} does not exist.")
    return spec.reader(data_dir, **(reader_options or {}))


def _generate(spec: DatasetSpec, data_dir: Path, options: dict[str, Any], log: Callable[[str], None]) -> None:
    """Generate beside the target and rename, so an interrupted run leaves nothing half-written."""
    log(f"Generating the embedded default dataset {spec.name!r} into {data_dir} ...")
    partial = data_dir.with_name(f".{data_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    spec.generator(partial, **options)
    partial.rename(data_dir)


@contextmanager
def create_once(target: Path) -> Iterator[bool]:
    """Hold the lock on creating ``target``; yields whether it still has to be created.

    Of processes starting together, the first creates it while the others wait, then find it and
    reuse it. ``target`` must appear atomically (renamed into place). The lock file beside it is
    removed once ``target`` exists: whoever takes a lock after that only finds ``target`` and
    reads it. After a failure it stays, so processes still waiting and later ones share one lock.
    """
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        try:
            yield not target.exists()
        finally:
            if target.exists():
                lock.unlink(missing_ok=True)


def frame_fingerprint(*frames: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for frame in frames:
        # Cells holding sequences (e.g. item histories) are hashed through their full text.
        sequences = [c for c in frame.columns if frame[c].dtype == object and len(frame) and
                     isinstance(frame[c].iloc[0], (list, tuple, np.ndarray))]  # fmt: skip
        frame = frame.assign(**{c: frame[c].map(lambda v: " ".join(map(str, v))) for c in sequences})
        digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
        digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()[:16]


def _array_digest(array: np.ndarray) -> str:
    """Bytes, shape and dtype of an array, so equal bytes read at another shape differ."""
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    digest.update(f"{array.shape}:{array.dtype.str}".encode())
    return digest.hexdigest()


def _import_builtin_datasets() -> None:
    # Built-in datasets register themselves on import.
    from harness.data import amazon, flickr8k, images, movielens, reid, views  # noqa: F401

"""Configuration: typed dataclass defaults ⊕ YAML file ⊕ ``key=value`` overrides ⊕ trial params.

Every layer is a nested dict; unset (``None``) values are dropped before merging so a later layer
only overrides what it states. The merged dict is validated against the dataclasses, which carry
the defaults and one comment per field, and kept whole for logging.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from harness.errors import HarnessError

__all__ = [
    "RunConfig",
    "TrainConfig",
    "DataConfig",
    "parse_overrides",
    "load_yaml",
    "merge",
    "build",
    "flatten",
    "check_fields",
    "POSITIVE_INT",
    "NON_NEGATIVE",
    "POSITIVE",
    "check_train_config",
    "FRACTION",
]


@dataclasses.dataclass
class TrainConfig:
    """The one training loop's knobs; families state their own defaults on top."""

    epochs: int = 20  # maximum number of passes over the training fold
    batch_size: int = 64  # rows per forward/backward pass
    grad_accumulation: int = 1  # passes whose gradients add up before each optimiser step (batch × this rows a step)
    lr: float = 1e-3  # peak learning rate after warm-up (AdamW)
    weight_decay: float = 0.01  # decoupled weight decay; never applied to biases, norms, 1-D params
    warmup_ratio: float = 0.1  # fraction of all steps spent warming up linearly, then cosine to 0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    patience: int = 5  # epochs without validation improvement before stopping early
    amp: bool = True  # mixed precision, applied only on CUDA
    compile: bool = False  # torch.compile the model, applied only on CUDA
    progress: bool = True  # show progress bars


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how its columns are named."""

    name: str | None = None  # dataset registry name; None: the model's default dataset
    dir: str | None = None  # directory with the real files; None: the embedded default
    root: str = "data"  # where embedded defaults are generated and caches kept
    options: dict = dataclasses.field(default_factory=dict)  # reader options (columns=, ...)


@dataclasses.dataclass
class RunConfig:
    """One cross-validation run: what to train, on what, how to split and score."""

    model: str = ""  # registered model family
    seed: int = 42  # seeds initialisation, shuffling and sampling, and the folds unless fold_seed is set
    fold_seed: int | None = None  # seeds the fold split (part of the fold file's name); None: seed
    folds: int = 3  # number of CV folds (K >= 2)
    fold_scheme: str | None = None  # kfold | stratified | group; None: the dataset's default
    metric: str | None = None  # validation/CV metric; None: the dataset's default
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 1  # folds run in this many processes at once (CPU fallback of devices)
    devices: str | None = None  # comma-separated, e.g. "cuda:0,cuda:1": one worker process per device
    threads_per_fold: int | None = None  # torch threads per fold; None: CPU cores // parallel folds
    folds_dir: str = "folds"  # where fold files are written and reused
    submissions_dir: str = "submissions"  # where submission CSVs are written
    tracking: bool = True  # log to MLflow (MLFLOW_TRACKING_URI or leaderboard/mlflow.db)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    model_params: dict = dataclasses.field(default_factory=dict)  # the family's own config


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=3e-4", "model.freeze_clip=true"]`` into a nested dict.

    Values are parsed as YAML scalars/lists, so ``3e-4`` is a float, ``true`` a bool and
    ``[1,2]`` a list. ``model.*`` keys go to the family's config.
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"Override {item!r} must look like key=value (e.g. train.lr=3e-4).")
        value = yaml.safe_load(raw) if raw != "" else None
        if isinstance(value, float) and value != value:
            raise HarnessError(f"Override {item!r}: NaN is not a valid setting.")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HarnessError(f"Override {item!r} conflicts with an earlier override of {part!r}.")
        node[parts[-1]] = value
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"Config file {str(path)!r} does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HarnessError(f"Config file {str(path)!r} is not valid YAML: {_one_line(exc)}") from exc
    if not isinstance(loaded, dict):
        raise HarnessError(f"Config file {str(path)!r} must hold a mapping, got {type(loaded).__name__}.")
    return loaded


def merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge dicts left to right; ``None`` values never override."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is None:
                continue
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            elif isinstance(value, Mapping):
                merged[key] = merge(value)
            else:
                merged[key] = value
    return merged


def build(cls: type, values: Mapping[str, Any], where: str = "config"):
    """Instantiate dataclass ``cls`` from ``values``, checking names and types.

    Unknown keys and wrongly typed values raise :class:`HarnessError` naming the key, the value
    and what was expected.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise HarnessError(
            f"Unknown {where} key {where_key(where, unknown[0])!r}; valid keys: {', '.join(fields)}."
        )
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, Mapping):
                raise HarnessError(f"{where_key(where, name)} must be a mapping, got {value!r}.")
            kwargs[name] = build(expected, value, where_key(where, name))
        else:
            kwargs[name] = _coerce(value, expected, where_key(where, name))
    return cls(**kwargs)


# Constraints for check_fields: (predicate, what the message says is expected).
POSITIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
POSITIVE = (lambda v: v > 0, "> 0")
FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
FINITE_POSITIVE = (lambda v: 0 < v < math.inf, "a finite number > 0")
FINITE_NON_NEGATIVE = (lambda v: 0 <= v < math.inf, "a finite number >= 0")


def check_fields(config: Any, constraint: tuple[Any, str], *names: str, where: str = "model") -> None:
    """A one-line error for the first of ``names`` whose value in ``config`` breaks ``constraint``.

    Families validate their config dataclass with it in their entry function, e.g.
    ``check_fields(config, POSITIVE_INT, "hidden_dim", "max_len")``.
    """
    ok, expected = constraint
    for name in names:
        value = getattr(config, name)
        if not ok(value):
            raise HarnessError(f"{where}.{name} must be {expected}, got {value!r}.")


def check_train_config(train: TrainConfig) -> None:
    """Every ``train.*`` setting in range, checked before anything is generated or written."""
    check_fields(train, POSITIVE_INT, "epochs", "batch_size", "grad_accumulation", "patience", where="train")
    check_fields(train, FINITE_POSITIVE, "lr", where="train")
    check_fields(train, FINITE_NON_NEGATIVE, "weight_decay", "grad_clip", where="train")
    check_fields(train, FRACTION, "warmup_ratio", where="train")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` → ``{"train.lr": 1e-3}``, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def where_key(where: str, key: str) -> str:
    return f"{where}.{key}" if where != "config" else key


def _coerce(value: Any, expected: Any, key: str) -> Any:
    """Accept ``value`` for a field annotated ``expected``; ints widen to floats, lists to tuples."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except HarnessError:
                continue
        raise HarnessError(f"{key} must be {_type_name(expected)}, got {value!r}.")
    if expected is Any:
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"{key} must be a list, got {value!r}.")
        args = typing.get_args(expected)
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or expected is dict:
        if not isinstance(value, Mapping):
            raise HarnessError(f"{key} must be a mapping, got {value!r}.")
        return dict(value)
    if expected is float and isinstance(value, str):
        value = _yaml11_float(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise HarnessError(f"{key} must be true or false, got {value!r}.")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise HarnessError(f"{key} must be an integer, got {value!r}.")
    if isinstance(expected, type) and not isinstance(value, expected):
        raise HarnessError(f"{key} must be {_type_name(expected)}, got {value!r}.")
    return value


def _yaml11_float(text: str) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; a user writing it means the number."""
    try:
        return float(text) if any(c.isdigit() for c in text) else text
    except ValueError:
        return text


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())

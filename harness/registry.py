"""Model families: the contract the core relies on, and a registry by name.

A family module states a config dataclass and a small entry function that builds the family from
it, registered with :func:`register_model`. Every family, built-in or third-party, is found through
the ``moe_harness.models`` entry-point group (``pyproject.toml``): loading the entry point imports
the module, whose decorators register its families.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from harness.config import build
from harness.data import Dataset
from harness.errors import HarnessError
from harness.metrics import Metric
from harness.tasks import TaskType

__all__ = [
    "Family",
    "FitContext",
    "ModelEntry",
    "register_model",
    "create_model",
    "get_model_entry",
    "list_models",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "moe_harness.models"


@dataclass
class FitContext:
    """What the core hands a family for one fold."""

    dataset: Dataset  # the whole dataset (meta, root); fit() gets the fold's rows separately
    metric: Metric  # validation metric; its direction drives early stopping
    train_config: Any  # harness.config.TrainConfig
    device: str  # resolved torch device string
    seed: int  # this fold's seed
    fold: int  # fold index, for logging
    workdir: Path  # fold-private space (checkpoints); PNG figures written here are logged with the run
    cache_dir: Path  # shared across folds and runs (feature caches)
    log_metrics: Callable[[dict[str, float], int], None]  # (metrics, step) → tracking
    log: Callable[[str], None] = print


class Family(abc.ABC):
    """One model family, trained and evaluated by the core fold by fold.

    Subclasses set ``task`` and implement :meth:`fit` and :meth:`predict`; predictions have the
    task's shape (see :class:`harness.tasks.TaskType`) so the CV runner, metrics, blending and the
    submission writer never need to know the family.
    """

    task: TaskType

    @abc.abstractmethod
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        """Train on ``train`` rows, early-stopping on ``ctx.metric`` over ``valid`` rows."""

    @abc.abstractmethod
    def predict(self, part: pd.DataFrame) -> np.ndarray:
        """Predictions for ``part``'s rows, in the task's prediction shape."""

    def explain(self) -> dict[str, float]:
        """Interpretable scalars after training, keyed ``group/name`` (e.g. ``weights/image``)."""
        return {}

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Swap in other trained weights (e.g. the last epoch's, ``final.pt``) before predicting.

        Optional: families trained by the harness loop implement it, so the CV runner can also
        predict with the final checkpoint (the seed's ``use_best_checkpoint=false``).
        """
        raise NotImplementedError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: TaskType
    build: Callable[..., Family]  # entry function taking the family config
    config_cls: type  # dataclass of the family's defaults
    dataset: str  # default dataset
    train_defaults: Mapping[str, Any]  # the family's TrainConfig defaults
    search_space: Callable | None  # search_space(trial) -> dict of overrides
    description: str


_MODELS: dict[str, ModelEntry] = {}
_plugins_loaded = False


def register_model(
    name: str,
    *,
    task: TaskType,
    config: type,
    dataset: str,
    train_defaults: Mapping[str, Any] | None = None,
    search_space: Callable | None = None,
):
    """Register the decorated entry function ``fn(config) -> Family`` under ``name``."""

    def decorator(fn: Callable[..., Family]) -> Callable[..., Family]:
        if name in _MODELS and _MODELS[name].build is not fn:
            raise ValueError(f"Model family {name!r} is already registered.")
        _MODELS[name] = ModelEntry(
            name=name,
            task=TaskType(task),
            build=fn,
            config_cls=config,
            dataset=dataset,
            train_defaults=dict(train_defaults or {}),
            search_space=search_space,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )
        return fn

    return decorator


def list_models() -> list[str]:
    _load_families()
    return sorted(_MODELS)


def get_model_entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _MODELS:
        raise HarnessError(f"Unknown model {name!r}, valid models: {', '.join(sorted(_MODELS))}.")
    return _MODELS[name]


def create_model(name: str, params: Mapping[str, Any] | None = None) -> Family:
    """Build family ``name`` from its defaults overridden by ``params`` (validated)."""
    entry = get_model_entry(name)
    config = build(entry.config_cls, {k: v for k, v in (params or {}).items() if v is not None}, "model")
    return entry.build(config)


def _load_families() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # name the plugin, so the user knows what to fix or uninstall
            raise HarnessError(f"Model plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
    if not _MODELS:
        raise HarnessError(f"No model family is installed (entry-point group {ENTRY_POINT_GROUP!r}); "
                           "install the project first: pip install -e .")  # fmt: skip

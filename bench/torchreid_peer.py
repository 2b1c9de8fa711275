"""Import one function of torchreid, the peer of the re-ID benches, even where its package import fails.

torchreid 0.2.5's ``__init__`` pulls in cv2, gdown and its data and model code; the evaluation and
re-ranking modules need numpy only. So: import the package normally, and if that fails, load the
one file the bench needs from the installed package directly. Benches only; never a dependency.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Any, Callable


def load(module: str, name: str) -> tuple[Callable[..., Any] | None, str]:
    """``(torchreid.<module>.<name>, how it was imported)``, or ``(None, why not)``.

    ``module`` is dotted below ``torchreid.reid``, e.g. ``"metrics.rank"`` or ``"utils.rerank"``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cython evaluation ... unavailable"
        try:
            return getattr(importlib.import_module(f"torchreid.reid.{module}"), name), f"torchreid.reid.{module}"
        except Exception as exc:  # noqa: BLE001 -- the package import pulls in cv2, gdown, ...
            reason = f"{type(exc).__name__}: {exc}"
        spec = importlib.util.find_spec("torchreid")
        if spec is None or not spec.submodule_search_locations:
            return None, reason
        path = os.path.join(next(iter(spec.submodule_search_locations)), "reid", *module.split(".")) + ".py"
        if not os.path.exists(path):
            return None, reason
        file_spec = importlib.util.spec_from_file_location(f"torchreid_{module.replace('.', '_')}", path)
        loaded = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(loaded)
        return getattr(loaded, name), f"{path} (package import failed: {reason})"

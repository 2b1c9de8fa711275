"""open_clip encoders shared by the families that see images and text.

Loads any open_clip architecture with ``pretrained=`` an open_clip tag or a local checkpoint file
(or ``None``: random initialisation, trained from scratch), turns image files into pixel tensors
and texts into tokens, and encodes them in batches. ``ViT-Tiny-16-64`` (``clip_configs/``) is a
small architecture registered here so that the embedded defaults train on a CPU in minutes.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.features import FeatureCache

__all__ = ["ClipBundle", "load_clip", "load_pixels", "tokenize", "encode", "weights_fingerprint", "encode_item_images"]

open_clip.add_model_config(Path(__file__).parent / "clip_configs")


@dataclass
class ClipBundle:
    """An open_clip model with its preprocessing, tokenizer and where its weights came from."""

    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str
    pretrained: str | None
    embed_dim: int


def load_clip(
    name: str,
    pretrained: str | None,
    log: Callable[[str], None] = print,
    *,
    image_size: tuple[int, int] | None = None,
    context_length: int | None = None,
    embed_dim: int | None = None,
) -> ClipBundle:
    """Build open_clip model ``name`` with weights from ``pretrained`` (tag, file, or ``None``).

    ``image_size`` and ``context_length`` override the architecture's (open_clip resizes pretrained
    position embeddings to them); ``embed_dim`` overrides the shared embedding size (random init only).
    """
    if name not in open_clip.list_models():
        raise HarnessError(f"Unknown open_clip model {name!r}; see open_clip.list_models() (e.g. ViT-B-32, ViT-Tiny-16-64).")
    if pretrained and Path(pretrained).suffix and not Path(pretrained).is_file():
        raise HarnessError(f"Pretrained CLIP checkpoint {pretrained!r} does not exist.")
    overrides = {"force_image_size": image_size, "force_context_length": context_length}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if embed_dim is not None:
        overrides["embed_dim"] = embed_dim
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # open_clip warns on random init; the harness says it below
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None, **overrides)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        source = f"checkpoint {pretrained!r}" if pretrained and Path(pretrained).is_file() else f"pretrained={pretrained!r}"
        raise HarnessError(f"Could not load CLIP {name!r} from {source}: {reason}") from exc
    finally:
        root_logger.setLevel(level)
    where = f" at {image_size[0]}x{image_size[1]} px" if image_size else ""
    if pretrained:
        log(f"CLIP {name}{where}: weights from {pretrained}")
    else:
        log(f"CLIP {name}{where}: no pretrained weights (offline default): randomly initialised; set "
            "model.pretrained=<open_clip tag or checkpoint file> for pretrained encoders")  # fmt: skip
    embed_dim = model.text_projection.shape[1] if hasattr(model, "text_projection") else model.visual.output_dim
    return ClipBundle(model, preprocess, open_clip.get_tokenizer(name), name, pretrained, int(embed_dim))


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every tensor of ``model``: part of a feature-cache key, so new weights never reuse stale features."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_pixels(
    paths: Sequence[str], ok: Sequence[bool], preprocess: Callable, progress: bool = True
) -> torch.Tensor:
    """Preprocessed pixels ``[N, 3, H, W]``; rows whose image is not ``ok`` stay zero (and are masked)."""
    first = next((i for i, good in enumerate(ok) if good), None)
    if first is None:
        raise HarnessError("No readable image among the rows; the image modality cannot be used.")
    shape = preprocess(Image.open(paths[first]).convert("RGB")).shape
    pixels = torch.zeros((len(paths), *shape))
    quiet = not progress or not sys.stderr.isatty()  # no carriage-return bars in a log file
    for i in tqdm(np.flatnonzero(ok), desc="loading images", disable=quiet, leave=False, unit="img"):
        with Image.open(paths[i]) as image:
            pixels[i] = preprocess(image.convert("RGB"))
    return pixels


def tokenize(texts: Sequence[str], tokenizer: Callable, batch_size: int = 4096) -> torch.Tensor:
    return torch.cat([tokenizer(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def encode(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    batch_size: int,
    device: str,
    desc: str = "encoding",
    progress: bool = True,
) -> torch.Tensor:
    """``fn`` (e.g. ``model.encode_image``) over ``inputs`` in batches on ``device``; results on CPU."""
    outputs = []
    quiet = not progress or not sys.stderr.isatty()
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, disable=quiet, leave=False):
        outputs.append(fn(inputs[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outputs)


def encode_item_images(dataset, n_items: int, clip_model: str, pretrained: str | None, init_seed: int, ctx, *,
                       batch_size: int = 256, progress: bool = True, column: str = "poster_path",
                       what: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Frozen CLIP features ``[n_items, D]`` of every catalogue item's image (``dataset.meta["items"][column]``,
    by ``item_id``), cached under ``ctx.cache_dir``, and which items have a readable image.

    Items without one get features of zero; how many is logged, with ``what`` else the caller
    does about them. A random CLIP is seeded by ``init_seed``, so every fold shares one encoder and one
    cache entry.
    """
    items = dataset.meta["items"]
    paths: list[str | None] = [None] * n_items
    for item, path in zip(items["item_id"], items[column]):
        paths[int(item)] = path
    ok = [path is not None and _readable(path) for path in paths]
    missing = len(items) - sum(ok)
    if missing:
        ctx.log(f"{missing} of {len(items)} items have no readable image: image features of zero"
                + (f", {what}" if what else ""))
    torch.manual_seed(init_seed)
    bundle = load_clip(clip_model, pretrained, log=ctx.log)
    if not any(ok):
        return torch.zeros(n_items, bundle.embed_dim), torch.zeros(n_items, dtype=torch.bool)
    model = bundle.model.to(ctx.device).eval()
    key = {"clip": bundle.name, "pretrained": bundle.pretrained, "weights": weights_fingerprint(model),
           "data": dataset.fingerprint, "preprocess": repr(bundle.preprocess), "rows": "item_id"}  # fmt: skip
    features = FeatureCache(ctx.cache_dir, ctx.log).get_or_compute("clip-poster", key, lambda: encode(
        model.encode_image, load_pixels([p or "" for p in paths], ok, bundle.preprocess, progress),
        batch_size, ctx.device, "encoding item images", progress))  # fmt: skip
    return features, torch.tensor(ok)


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:
        return False

"""Dual encoder: CLIP's image and text towers trained contrastively, the no-MoE retrieval baseline.

An open_clip model, built from an architecture name at the dataset's image size
(``meta["image_shape"]``) with a text context of ``max_text_len`` tokens, trained with CLIP's
symmetric InfoNCE loss: in a batch of matching pairs, each image must pick out its caption among
the batch's captions and each caption its image, at a learnt temperature (the logit scale is
clamped at 100, as in CLIP). Nothing is routed through experts, so a Diff-MoE run on the same
folds has to beat this to show that its experts pay for themselves.

Random towers by default (the embedded data is synthetic, so nothing pretrained applies); with
real Flickr8k photos, ``model.clip_model=ViT-B-32 model.pretrained=openai`` (an open_clip tag,
or a checkpoint file) starts from CLIP's weights; give it the reader's 224 px images and a larger
batch.
Images reach the towers standardised with the fold's own channel statistics, not CLIP's.

The default ``ViT-Tiny-16-64`` (``clip_configs/``: two layers of width 128 per tower, 16 px
patches) trains on a CPU. Measured on the embedded data with the defaults below, as
``run.py --model dual_encoder --folds 3`` runs it (1,067 images to train on and a gallery of 533
per fold; seed 42, one thread per fold on a shared, busy 2-core CPU):

========================================  =====================  =====================  =====
                                          image → text R@1/5/10  text → image R@1/5/10  rsum
========================================  =====================  =====================  =====
random (the CV runner's baseline)                                                        0.064
out of fold (3 folds, 2.468 ± 0.005)      14.1 / 37.9 / 57.3     12.3 / 48.8 / 76.3     2.468
test (400 images, the 3 fold models)      17.3 / 53.8 / 73.3     17.7 / 62.7 / 91.0     3.156
========================================  =====================  =====================  =====

(the flickr8k module gives random 0.080 and the oracle 5.97 on that test split). An epoch takes
10–15 s, a fold 7–10 min (best epochs 35–39 of 40), the run 27 min; on a quiet machine with
``--workers 2`` the same numbers came in 14.4 min (10 s an epoch). Two things measured on one
800 / 800 split: ``model.augmentation=none`` gets there in half the epochs (rsum 1.71 against
1.51 with ``crop`` after 20 epochs, 1.76 against 1.75 after 40), so ``train.epochs=20`` with it
halves the time; and at ``train.lr=1e-3`` with CLIP's temperature 0.07 random towers collapse
(every image and caption embedded alike, the loss stuck at log(batch)), which a higher starting
``model.temperature`` (0.2) avoids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import POSITIVE_INT, check_fields
from harness.errors import HarnessError
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.tasks.retrieval import ImageTextRetriever
from models.clip_encoder import load_clip, tokenize

__all__ = ["DualEncoderConfig", "DualEncoderNetwork", "DualEncoder", "dual_encoder", "search_space"]

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of the learnt inverse temperature
AUGMENTATIONS = ("none", "crop")  # no flips: captions say "left of"


@dataclass
class DualEncoderConfig:
    clip_model: str = "ViT-Tiny-16-64"  # any open_clip architecture (ViT-B-32, ...); the default trains on a CPU
    pretrained: str | None = None  # open_clip tag (e.g. "openai") or a checkpoint file; None: random init
    embed_dim: int | None = None  # size of the shared embedding; None: the architecture's (fixed when pretrained)
    max_text_len: int = 32  # text context in tokens; longer captions are truncated
    temperature: float = 0.07  # softmax temperature random towers start from (CLIP's); learnt from there
    augmentation: str = "crop"  # training augmentation: crop (random translations) or none; never flips


class DualEncoderNetwork(nn.Module):
    """An open_clip model with CLIP's symmetric InfoNCE loss as its training step."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, tokens = batch
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale() * image @ text.T  # [B, B]; pair i is row i's and column i's positive
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def epoch_logs(self) -> dict[str, float]:
        return {"logit_scale": float(self.logit_scale().detach())}


class DualEncoder(ImageTextRetriever):
    def __init__(self, config: DualEncoderConfig):
        self.config = config
        self.augmentation = config.augmentation
        self.tokenizer = open_clip.get_tokenizer(config.clip_model)

    def build_network(self, dataset, ctx: FitContext) -> nn.Module:
        height, width, _ = dataset.meta["image_shape"]
        cfg = self.config
        clip = load_clip(cfg.clip_model, cfg.pretrained, ctx.log, image_size=(int(height), int(width)),
                         context_length=cfg.max_text_len, embed_dim=cfg.embed_dim).model  # fmt: skip
        if not cfg.pretrained:
            clip.logit_scale.data.fill_(math.log(1 / cfg.temperature))
        return DualEncoderNetwork(clip)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return tokenize(texts, lambda batch: self.tokenizer(batch, context_length=self.config.max_text_len))


def search_space(trial) -> dict[str, Any]:
    return {
        "model": {
            "temperature": trial.suggest_float("model.temperature", 0.03, 0.3, log=True),
            "augmentation": trial.suggest_categorical("model.augmentation", list(AUGMENTATIONS)),
        },
        "train": {"lr": trial.suggest_float("train.lr", 2e-4, 2e-3, log=True),
                  "weight_decay": trial.suggest_float("train.weight_decay", 1e-3, 1e-1, log=True),
                  "batch_size": trial.suggest_categorical("train.batch_size", [32, 64, 128])},  # fmt: skip
    }


@register_model(
    "dual_encoder",
    task=TaskType.RETRIEVAL,
    config=DualEncoderConfig,
    dataset="flickr8k",
    train_defaults={"epochs": 40, "batch_size": 64, "lr": 5e-4, "weight_decay": 0.05, "patience": 8,
                    "warmup_ratio": 0.05},  # fmt: skip
    search_space=search_space,
)
def dual_encoder(config: DualEncoderConfig) -> DualEncoder:
    """CLIP image and text towers trained with the symmetric InfoNCE loss: the retrieval baseline (baseline)."""
    if config.clip_model not in open_clip.list_models():
        raise HarnessError(f"model.clip_model {config.clip_model!r} is not an open_clip architecture; "
                           "see open_clip.list_models() (e.g. ViT-B-32, ViT-Tiny-16-64).")  # fmt: skip
    check_fields(config, POSITIVE_INT, "max_text_len")
    if config.embed_dim is not None:
        check_fields(config, POSITIVE_INT, "embed_dim")
    if not 1 / MAX_LOGIT_SCALE <= config.temperature < math.inf:
        raise HarnessError(f"model.temperature must be in [{1 / MAX_LOGIT_SCALE}, inf), got {config.temperature!r}.")
    if config.augmentation not in AUGMENTATIONS:
        raise HarnessError(f"model.augmentation must be one of {', '.join(AUGMENTATIONS)}, got {config.augmentation!r} "
                           "(flips would contradict captions that say left or right).")  # fmt: skip
    if config.pretrained and not Path(config.pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(config.clip_model)
        if config.pretrained not in tags:
            raise HarnessError(f"model.pretrained {config.pretrained!r} is neither a file nor an open_clip tag of "
                               f"{config.clip_model} ({', '.join(tags) or 'it has none'}).")  # fmt: skip
    if config.pretrained and config.embed_dim is not None:
        raise HarnessError(f"model.embed_dim must stay unset with pretrained weights, got {config.embed_dim!r}; "
                           "their embedding size is the architecture's.")  # fmt: skip
    return DualEncoder(config)

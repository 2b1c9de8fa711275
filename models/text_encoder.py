"""Text encoders shared by the families that read free text (preference texts, plot descriptions).

Two kinds, chosen by one config string:

- ``"bow"``: a trainable bag-of-words encoder (mean of learned word embeddings) over a vocabulary
  built from the texts themselves -- the offline default, trained with the family.
- any other value: a Hugging Face model name or local directory, loaded with
  ``transformers.AutoModel.from_pretrained`` and mean-pooled over tokens (the pooling of
  sentence-transformers models such as all-MiniLM-L6-v2), frozen; texts are encoded once and cached
  on disk, keyed by the model's weights and the texts.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.features import FeatureCache
from models.clip_encoder import weights_fingerprint

__all__ = ["BagOfWords", "tokenize_words", "encode_with_transformer"]

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def tokenize_words(text: str) -> list[str]:
    """Lower-cased alphabetic words (accents kept)."""
    return _WORD.findall(text.lower())


class BagOfWords(nn.Module):
    """Mean of trainable word embeddings; unknown words and empty texts map to a learned ``<unk>``.

    The vocabulary holds the ``max_vocab`` most frequent words occurring at least ``min_count``
    times in ``texts``; texts are stored as token ids, so ``forward(index)`` encodes texts by row.

    Args:
        texts: every text the encoder will be asked for, in row order.
        dim: embedding width.
        min_count: words rarer than this are ``<unk>``. Defaults to 2.
        max_vocab: vocabulary cap. Defaults to 20000.
    """

    def __init__(self, texts: Sequence[str], dim: int, min_count: int = 2, max_vocab: int = 20000):
        super().__init__()
        tokens = [tokenize_words(t) for t in texts]
        counts = Counter(word for words in tokens for word in words)
        vocab = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count][:max_vocab]
        index = {word: i + 1 for i, word in enumerate(vocab)}  # 0 = <unk>
        ids = [[index.get(w, 0) for w in words] or [0] for words in tokens]
        self.vocab_size = len(vocab) + 1
        self.register_buffer("flat", torch.tensor([i for row in ids for i in row], dtype=torch.long), persistent=False)
        self.register_buffer("lengths", torch.tensor([len(row) for row in ids]), persistent=False)
        self.register_buffer("offsets", torch.cumsum(self.lengths, 0) - self.lengths, persistent=False)
        self.embedding = nn.EmbeddingBag(self.vocab_size, dim, mode="mean")
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``[len(index), dim]`` encodings of the texts at rows ``index``."""
        starts, lengths = self.offsets[index], self.lengths[index]
        positions = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
        positions = positions + torch.arange(int(lengths.sum()), device=positions.device)
        return self.embedding(self.flat[positions], torch.cumsum(lengths, 0) - lengths)


def encode_with_transformer(
    name_or_path: str,
    texts: Sequence[str],
    *,
    device: str = "cpu",
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> torch.Tensor:
    """``[len(texts), hidden]`` mean-pooled last hidden states of a frozen transformers encoder."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModel.from_pretrained(name_or_path).eval().to(device)
    except Exception as exc:
        where = "directory" if Path(name_or_path).exists() else "model name (no network: pass a local directory)"
        reason = " ".join(str(exc).split())[:200]
        raise HarnessError(f"Could not load text encoder {name_or_path!r} ({where}): {reason}") from exc
    log(f"text encoder {name_or_path}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, frozen")

    @torch.no_grad()
    def compute() -> torch.Tensor:
        out = []
        quiet = not progress or not sys.stderr.isatty()  # no carriage-return bars in a log file
        for start in tqdm(range(0, len(texts), batch_size), desc="encoding texts", disable=quiet, leave=False):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu())
        return torch.cat(out)

    if cache is None:
        return compute()
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    key = {"encoder": str(name_or_path), "weights": weights_fingerprint(model), "texts": digest, "max_length": max_length}
    return cache.get_or_compute("text", key, compute)

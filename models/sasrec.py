"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal transformer reads a user's last ``max_len`` items (item + learned position embeddings);
the hidden state at each position scores every item as the next one through the shared item
embedding table. Trained here with cross-entropy over the whole catalogue at every position (as
in later re-implementations; the paper sampled one negative per position with binary
cross-entropy, which ranks worse under full-ranking evaluation). Padded positions are zeroed after
the embedding and after every block, as in the reference implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from harness.config import FRACTION, POSITIVE_INT, check_fields
from harness.errors import HarnessError
from harness.tasks.recommendation import SequentialRecommender, pad_left, training_sequences
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.trainer import Trainer

__all__ = ["SASRecConfig", "SASRecModel", "SASRec", "sasrec", "search_space"]


@dataclass
class SASRecConfig:
    max_len: int = 50  # most recent items read per user
    hidden_dim: int = 64  # item/position embedding and transformer width
    n_blocks: int = 2  # self-attention blocks
    n_heads: int = 2  # attention heads per block
    dropout: float = 0.2  # on embeddings, attention and feed-forward
    score_batch_size: int = 512  # users per batch when scoring the catalogue


class SASRecModel(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items, config.hidden_dim, padding_idx=0)
        self.positions = nn.Embedding(config.max_len, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(config.hidden_dim, config.n_heads, config.hidden_dim, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)  # fmt: skip
            for _ in range(config.n_blocks)
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(config.max_len), persistent=False)
        nn.init.normal_(self.items.weight, std=config.hidden_dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` states; position ``t`` has seen items ``<= t`` only."""
        keep = (inputs != 0).unsqueeze(-1)
        x = self.items(inputs) * self.items.embedding_dim**0.5 + self.positions.weight[-inputs.shape[1] :]
        x = self.dropout(x) * keep
        for block in self.blocks:
            x = block(x, src_mask=self.causal[: inputs.shape[1], : inputs.shape[1]], is_causal=True) * keep
        return self.norm(x)

    def training_step(self, batch) -> torch.Tensor:
        inputs, targets = batch
        logits = self.hidden(inputs) @ self.items.weight.T
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)

    def score(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.hidden(inputs)[:, -1] @ self.items.weight.T


class SASRec(SequentialRecommender):
    def __init__(self, config: SASRecConfig):
        self.config = config

    def fit_recommender(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        torch.manual_seed(ctx.seed)
        self.model = SASRecModel(self.n_items, self.config)
        # One example per sequence: inputs s_1..s_{n-1}, next-item targets s_2..s_n, right-aligned.
        sequences = [s for s in training_sequences(train, valid) if len(s) >= 2]
        inputs = pad_left([s[:-1] for s in sequences], self.config.max_len)
        targets = pad_left([s[1:] for s in sequences], self.config.max_len)
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        trainer.fit(self.model, TensorDataset(inputs, targets), evaluate=lambda module: self.validation_score(valid, ctx))

    def score(self, part: pd.DataFrame) -> torch.Tensor:
        inputs = pad_left(part["history"].tolist(), self.config.max_len).to(self.device)
        size = self.config.score_batch_size
        return torch.cat([self.model.score(inputs[i : i + size]) for i in range(0, len(inputs), size)])

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.model.load_state_dict(state_dict)


def search_space(trial) -> dict[str, Any]:
    return {
        "model": {
            "hidden_dim": trial.suggest_categorical("model.hidden_dim", [32, 64, 128]),
            "n_blocks": trial.suggest_int("model.n_blocks", 1, 3),
            "dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
            "max_len": trial.suggest_categorical("model.max_len", [25, 50, 100]),
        },
        "train": {"lr": trial.suggest_float("train.lr", 3e-4, 5e-3, log=True)},
    }


@register_model(
    "sasrec",
    task=TaskType.SEQUENTIAL_RECOMMENDATION,
    config=SASRecConfig,
    dataset="movielens",
    train_defaults={"epochs": 40, "batch_size": 32, "lr": 5e-3, "weight_decay": 0.0, "patience": 10,
                    "warmup_ratio": 0.05},  # fmt: skip
    search_space=search_space,
)
def sasrec(config: SASRecConfig) -> SASRec:
    """SASRec: causal self-attention over item sequences, cross-entropy over the catalogue (baseline)."""
    check_fields(config, POSITIVE_INT, "max_len", "hidden_dim", "n_blocks", "n_heads", "score_batch_size")
    if config.hidden_dim % config.n_heads:
        raise HarnessError(f"model.hidden_dim ({config.hidden_dim}) must be divisible by model.n_heads ({config.n_heads}).")
    check_fields(config, FRACTION, "dropout")
    return SASRec(config)

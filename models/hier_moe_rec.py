"""Hierarchical MoE + CLIP recommender (seed 000): 3 modalities × 3 sub-experts, then a cross-modal router.

Level 1, within each modality, a mixture of 3 sub-experts with its own gate (9 experts), named
after the aspect the seed hopes each learns:

- user preference text → ``user`` MoE (genre, mood, style)            → :math:`p_u`
- item description text → ``desc`` MoE (content, theme, quality)      → :math:`t_i`
- item poster, CLIP image features → ``image`` MoE (composition, color, object) → :math:`v_i`

Level 2, a cross-modal router weighs three relevance scores per (user, item):

.. math:: s(u, i) = b_i + w_{user}\\,\\langle p_u, K c_i\\rangle + w_{desc}\\,\\langle q_u, t_i\\rangle
          + w_{image}\\,\\langle q_u, v_i\\rangle, \\qquad
          w(u, i) = \\mathrm{softmax}\\big((R_u p_u + R_t t_i + R_v v_i) / \\tau\\big)

with :math:`c_i = t_i + v_i` an item's content, :math:`q_u` the user's query (their preference
output and a recency-weighted pool of the contents of their last ``history_len`` items -- the
sequential signal of next-item prediction) and :math:`b_i` an item bias (popularity prior). The
router is linear in the concatenated modality outputs, so its logits factorise into a user part
and an item part and the whole catalogue is scored without materialising pair features. An item
without a poster has image features of zero and its image weight masked to exactly 0.

Training: next-item prediction with cross-entropy over the whole catalogue (no sampled softmax),
on each training sequence's last ``positions_per_user`` positions, plus the Switch load-balance
loss of each level-1 gate. :meth:`HierMoERec.explain` reports the routing weights per modality
and per genre (a heatmap in the run's artifacts) and how strongly each gate's routing depends on
genre (``specialisation/*``: 0 means the experts did not split by genre).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from harness.config import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, check_fields
from harness.data import Dataset
from harness.features import FeatureCache
from harness.tasks.recommendation import SequentialRecommender, pad_left, training_sequences
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.trainer import Trainer
from models.clip_encoder import encode_item_images
from models.moe import Gate, MixtureOfExperts, load_balance_loss
from models.text_encoder import BagOfWords, encode_with_transformer

__all__ = ["HierMoERecConfig", "HierarchicalMoE", "HierMoERec", "hier_moe_rec", "search_space"]

MODALITIES = ("user", "desc", "image")
SUB_EXPERTS = {  # the aspect the seed hopes each sub-expert learns; measured by explain()
    "user": ("genre", "mood", "style"),
    "desc": ("content", "theme", "quality"),
    "image": ("composition", "color", "object"),
}


@dataclass
class HierMoERecConfig:
    text_encoder: str = "bow"  # "bow" (trainable bag of words) or a Hugging Face model name / local directory
    text_dim: int = 64  # width of the bag-of-words embeddings
    clip_model: str = "ViT-Tiny-16-64"  # open_clip architecture encoding the posters
    pretrained: str | None = None  # open_clip tag or checkpoint file; None: random init (offline default)
    init_seed: int = 0  # seeds a randomly initialised CLIP, so every fold shares one encoder and its cache
    hidden_dim: int = 64  # width of every modality output and expert
    temperature: float = 1.0  # level-1 gate temperature (< 1: sharper routing)
    router_temperature: float = 1.0  # level-2 cross-modal router temperature
    history_len: int = 20  # most recent items pooled into the user's query
    positions_per_user: int = 20  # next-item targets per training sequence and epoch (its most recent)
    balance_weight: float = 0.01  # weight of each level-1 gate's load-balance loss
    dropout: float = 0.1  # inside the experts
    encode_batch_size: int = 256  # posters per batch when encoding with CLIP
    score_batch_size: int = 256  # users per batch when scoring the catalogue


class _Frozen(nn.Module):
    """Precomputed features looked up by row, in the same interface as :class:`BagOfWords`."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.register_buffer("features", features.float(), persistent=False)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.features[index]


class HierarchicalMoE(nn.Module):
    """The two-level MoE over all items at once and a batch of users.

    ``texts(index)`` encodes text rows: users at ``user_rows``, items' descriptions at
    ``item_rows``; ``image_features`` ``[n_items, D]`` and ``has_image`` ``[n_items]`` are per item id.
    """

    def __init__(self, texts: nn.Module, text_dim: int, item_rows: torch.Tensor, image_features: torch.Tensor,
                 has_image: torch.Tensor, config: HierMoERecConfig):  # fmt: skip
        super().__init__()
        d = config.hidden_dim
        self.config = config
        self.texts = texts
        self.register_buffer("item_rows", item_rows, persistent=False)
        self.register_buffer("image_features", image_features.float(), persistent=False)
        self.register_buffer("has_image", has_image, persistent=False)
        self.image_norm = nn.LayerNorm(image_features.shape[1])
        self.moe = nn.ModuleDict({
            "user": MixtureOfExperts(text_dim, d, 3, d, config.temperature, dropout=config.dropout),
            "desc": MixtureOfExperts(text_dim, d, 3, d, config.temperature, dropout=config.dropout),
            "image": MixtureOfExperts(image_features.shape[1], d, 3, d, config.temperature, dropout=config.dropout),
        })  # fmt: skip
        self.recency = nn.Parameter(torch.zeros(config.history_len))  # position logits of the history pool
        self.query = nn.Sequential(nn.Linear(2 * d, d), nn.LayerNorm(d))
        self.key = nn.Linear(d, d, bias=False)
        self.router = Gate(3 * d, 3, config.router_temperature)  # over [p_u; t_i; v_i], evaluated factorised
        self.item_bias = nn.Parameter(torch.zeros(len(item_rows)))
        self._epoch_weights: list[torch.Tensor] = []

    def items(self) -> dict[str, torch.Tensor]:
        """Every item's description and image outputs and their sub-expert weights."""
        desc = self.moe["desc"](self.texts(self.item_rows))
        image = self.moe["image"](self.image_norm(self.image_features))
        shown = self.has_image.unsqueeze(-1).to(image.output.dtype)
        return {"desc": desc.output, "image": image.output * shown, "desc_probs": desc.probs,
                "desc_weights": desc.weights, "image_probs": image.probs, "image_weights": image.weights}  # fmt: skip

    def forward(self, user_rows: torch.Tensor, history: torch.Tensor, items: dict | None = None) -> dict[str, Any]:
        """Scores ``[B, n_items]`` of every item for the users, and the routing info of the seed."""
        items = self.items() if items is None else items
        t, v = items["desc"], items["image"]
        content = t + v
        user = self.moe["user"](self.texts(user_rows))
        p = user.output
        # the query: stated preference + a recency-weighted pool of the last items' contents
        seen = history != 0
        recency = self.recency[-history.shape[1] :].expand_as(history).masked_fill(~seen, float("-inf"))
        pool = torch.nan_to_num(recency.softmax(-1)).unsqueeze(-1).mul(content[history]).sum(1)
        q = self.query(torch.cat([p, pool], -1))
        relevance = torch.stack([p @ self.key(content).T, q @ t.T, q @ v.T], -1)  # [B, I, 3]
        # The router is linear in [p_u; t_i; v_i]: its logits are a user part plus an item part.
        w_user, w_desc, w_image = self.router.proj.weight.split(p.shape[1], dim=1)
        logits = (p @ w_user.T)[:, None] + (t @ w_desc.T + v @ w_image.T + self.router.proj.bias)[None]
        allowed = torch.stack([torch.ones_like(self.has_image), torch.ones_like(self.has_image), self.has_image], -1)
        cross = self.router.route(logits, allowed[None]).weights
        scores = (cross * relevance).sum(-1) + self.item_bias
        return {"scores": scores, "user_sub_weights": user.weights, "user_probs": user.probs,
                "desc_sub_weights": items["desc_weights"], "image_sub_weights": items["image_weights"],
                "cross_modal_weights": cross, **items}  # fmt: skip

    def training_step(self, batch) -> torch.Tensor:
        user_rows, history, target = batch
        out = self(user_rows, history)
        scores = out["scores"].clone()
        scores[:, 0] = float("-inf")  # never predict padding
        loss = F.cross_entropy(scores, target)
        balance = load_balance_loss(out["user_probs"], out["user_sub_weights"]) + load_balance_loss(
            out["desc_probs"][1:], out["desc_sub_weights"][1:]
        )  # fmt: skip
        shown = self.has_image.nonzero().squeeze(-1)
        if len(shown):
            balance = balance + load_balance_loss(out["image_probs"][shown], out["image_sub_weights"][shown])
        self._epoch_weights.append(out["cross_modal_weights"][torch.arange(len(target)), target].detach().float().cpu())
        return loss + self.config.balance_weight * balance

    def epoch_logs(self) -> dict[str, float]:
        """Mean cross-modal weights at the training targets during the epoch."""
        if not self._epoch_weights:
            return {}
        mean = torch.cat(self._epoch_weights).mean(0)
        self._epoch_weights.clear()
        return {f"cross_modal/{m}": float(w) for m, w in zip(MODALITIES, mean)}


class HierMoERec(SequentialRecommender):
    def __init__(self, config: HierMoERecConfig):
        self.config = config
        self.progress = True
        self._explained: dict[str, float] = {}

    def fit_recommender(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        self.progress = ctx.train_config.progress
        dataset = ctx.dataset
        image_features, has_image = encode_item_images(
            dataset, self.n_items, self.config.clip_model, self.config.pretrained, self.config.init_seed, ctx,
            batch_size=self.config.encode_batch_size, progress=self.progress, what="image weight 0 in the cross-modal router")
        torch.manual_seed(ctx.seed)  # after the encoders' own seeding: every trainable weight from the fold's seed
        texts, text_dim, self._user_row, item_rows = self._texts(dataset, ctx)
        self.model = HierarchicalMoE(texts, text_dim, item_rows, image_features, has_image, self.config)

        # next-item examples: each training sequence's most recent positions, the items before as history
        users, histories, targets = [], [], []
        for user, sequence in training_sequences(train, valid).items():
            for t in range(max(1, len(sequence) - self.config.positions_per_user), len(sequence)):
                users.append(self._user_row[user])
                histories.append(sequence[:t])
                targets.append(sequence[t])
        examples = TensorDataset(torch.tensor(users), pad_left(histories, self.config.history_len), torch.tensor(targets))
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        trainer.fit(self.model, examples, evaluate=lambda module: self.validation_score(valid, ctx))
        self._explained = self._routing_report(dataset, train, valid)

    @torch.no_grad()
    def score(self, part: pd.DataFrame) -> torch.Tensor:
        items = self.model.items()
        size = self.config.score_batch_size
        out = []
        for start in range(0, len(part), size):
            rows, history = self._inputs(part.iloc[start : start + size])
            out.append(self.model(rows, history, items)["scores"])
        return torch.cat(out)

    def explain(self) -> dict[str, float]:
        return dict(self._explained)

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.model.load_state_dict(state_dict)

    # -- inputs ---------------------------------------------------------------------------------

    def _inputs(self, part: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([self._user_row[u] for u in part["user_id"]], device=self.device)
        return rows, pad_left(part["history"].tolist(), self.config.history_len).to(self.device)

    def _texts(self, dataset: Dataset, ctx: FitContext):
        """One text table: users' preference texts, then item descriptions (row of item id i: U + i)."""
        users = dataset.train.drop_duplicates("user_id")
        user_row = {int(u): i for i, u in enumerate(users["user_id"])}
        items = dataset.meta["items"]
        descriptions = [""] * self.n_items
        for item, text in zip(items["item_id"], items["description"]):
            descriptions[int(item)] = str(text)
        texts = users["user_text"].astype(str).tolist() + descriptions
        item_rows = torch.arange(len(users), len(users) + self.n_items)
        if self.config.text_encoder == "bow":
            return BagOfWords(texts, self.config.text_dim), self.config.text_dim, user_row, item_rows
        features = encode_with_transformer(self.config.text_encoder, texts, device=ctx.device,
                                           cache=FeatureCache(ctx.cache_dir, ctx.log), progress=self.progress,
                                           log=ctx.log)  # fmt: skip
        return _Frozen(features), features.shape[1], user_row, item_rows

    # -- the expert specialisation report ---------------------------------------------------------

    @torch.no_grad()
    def _routing_report(self, dataset: Dataset, train: pd.DataFrame, valid: pd.DataFrame) -> dict[str, float]:
        """Mean routing weights per modality and per genre, and how much each gate's routing depends on genre.

        Items count in every genre they have; a user counts in the most frequent genre of their
        history; the cross-modal weights are those of each validation user and their validation item.
        """
        self.model.eval()
        genres_of = _genres_by_item(dataset, self.n_items)
        item_out = self.model.items()
        rows, history = self._inputs(valid)
        out = self.model(rows, history, item_out)
        target = torch.tensor(valid["target"].to_numpy(np.int64), device=self.device)
        cross = out["cross_modal_weights"][torch.arange(len(valid)), target].cpu()
        user_genre = [_top_genre(h, genres_of) for h in valid["history"]]
        table: dict[str, tuple[torch.Tensor, list[list[str]]]] = {
            "user": (out["user_sub_weights"].cpu(), [[g] if g else [] for g in user_genre]),
            "desc": (item_out["desc_weights"].cpu()[1:], genres_of[1:]),
            "image": (item_out["image_weights"].cpu()[1:][self.model.has_image.cpu()[1:]],
                      [g for g, shown in zip(genres_of[1:], self.model.has_image.cpu()[1:]) if shown]),
            "cross": (cross, [genres_of[int(i)] for i in target.cpu()]),
        }  # fmt: skip
        report = {f"routing/cross_{m}": float(w) for m, w in zip(MODALITIES, cross.mean(0))}
        for name, (weights, genres) in table.items():
            columns = [f"cross:{m}" for m in MODALITIES] if name == "cross" else [f"{name}:{a}" for a in SUB_EXPERTS[name]]
            by_genre = {}
            for genre in dataset.meta.get("genres", []):
                members = [i for i, gs in enumerate(genres) if genre in gs]
                if members:
                    by_genre[genre] = weights[members].mean(0)
                    for column, value in zip(columns, by_genre[genre]):
                        report[f"routing_by_genre/{genre}/{column}"] = float(value)
            if by_genre and len(weights):
                overall = weights.mean(0)
                spread = torch.stack([0.5 * (w - overall).abs().sum() for w in by_genre.values()]).mean()
                report[f"specialisation/{name}"] = float(spread)
        return report


def _genres_by_item(dataset: Dataset, n_items: int) -> list[list[str]]:
    genres = [[] for _ in range(n_items)]
    for item, names in zip(dataset.meta["items"]["item_id"], dataset.meta["items"]["genres"]):
        genres[int(item)] = [g for g in str(names).split("|") if g]
    return genres


def _top_genre(history, genres_of: list[list[str]]) -> str | None:
    counts: dict[str, int] = {}
    for item in history:
        for genre in genres_of[int(item)]:
            counts[genre] = counts.get(genre, 0) + 1
    return max(sorted(counts), key=counts.get) if counts else None


def search_space(trial) -> dict[str, Any]:
    return {
        "model": {
            "hidden_dim": trial.suggest_categorical("model.hidden_dim", [32, 64, 128]),
            "temperature": trial.suggest_float("model.temperature", 0.3, 2.0, log=True),
            "history_len": trial.suggest_categorical("model.history_len", [5, 10, 20, 50]),
            "balance_weight": trial.suggest_float("model.balance_weight", 1e-3, 0.1, log=True),
            "dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
        },
        "train": {"lr": trial.suggest_float("train.lr", 5e-4, 5e-3, log=True)},
    }


@register_model(
    "hier_moe_rec",
    task=TaskType.SEQUENTIAL_RECOMMENDATION,
    config=HierMoERecConfig,
    dataset="movielens",
    train_defaults={"epochs": 15, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.01, "patience": 4,
                    "warmup_ratio": 0.05},  # fmt: skip
    search_space=search_space,
)
def hier_moe_rec(config: HierMoERecConfig) -> HierMoERec:
    """Hierarchical MoE + CLIP recommender: 3 modalities × 3 sub-experts, cross-modal router (seed 000)."""
    check_fields(config, POSITIVE_INT, "text_dim", "hidden_dim", "history_len", "positions_per_user",
                 "encode_batch_size", "score_batch_size")  # fmt: skip
    check_fields(config, POSITIVE, "temperature", "router_temperature")
    check_fields(config, NON_NEGATIVE, "balance_weight")
    check_fields(config, FRACTION, "dropout")
    return HierMoERec(config)

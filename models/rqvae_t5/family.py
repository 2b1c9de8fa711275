"""The ``rqvae_t5`` family (seed 002, MQL4GRec): semantic IDs from item embeddings, T5 decodes the next item.

Stages, each cached on disk under the run's cache directory, keyed by everything it depends on,
and shared by the folds (none of the first three sees a fold's targets):

1. **item embeddings** per modality of ``modalities``: ``text`` from each item's title,
   genres and description (``text_encoder``: ``tfidf``, a TF-IDF + truncated-SVD embedding that needs no
   weights; a transformers encoder directory such as all-MiniLM-L6-v2; or ``clip``, open_clip's
   text tower), ``image`` from frozen open_clip features of the item's image (posters for
   MovieLens); or a supplied ``.npy`` (``text_embeddings`` / ``image_embeddings``: one row per
   item, in item-id order; for the ``mql4grec`` dataset its own ``<D>.emb-<model>.npy``, rows in
   MQL4GRec's item-index order);
2. **RQ-VAE** (:mod:`models.rqvae_t5.rqvae`, config ``rqvae``) per modality, the checkpoint with
   the fewest collisions;
3. **codes** (:mod:`models.rqvae_t5.codes`): collisions resolved by distance, one unique tuple
   per item, written as MQL4GRec index files (``<dataset>.index_lemb.json`` text,
   ``<dataset>.index_vitemb.json`` image) beside the cached codes;
4. **T5** (:mod:`models.rqvae_t5.seq2seq`) trained per fold on the fold's training sequences
   with the seed's task mix (``tasks``), early-stopped on the validation metric; each epoch trains
   on ``positions_per_user`` target positions of every sequence, drawn anew each epoch from the
   whole sequence (``positions="random"``; ``"recent"``: always its most recent ones);
5. **decoding**: beam search (``num_beams``) constrained by a prefix trie over the items' code
   tuples, so every beam is an item: the text-code list (``seqrec``) and the image-code list
   (``seqimage``) are fused late, ``alpha`` × text + (1 − alpha) × image log-probability (an item
   missing from one list takes that list's lowest score, as :func:`~harness.tasks.recommendation.fuse`
   does).

It is a :class:`~harness.tasks.recommendation.ListRecommender`: it reports ``_full`` metrics, exact
for K up to its list's length (``num_beams`` per modality, after the history's items are dropped).

:meth:`RQVAET5.explain` reports, per modality, the RQ-VAE's reconstruction loss, collision rate
before resolution, items moved and per-level code utilisation, and, on up to
``constraint_check_users`` validation users, the share of beams that are no item under the seed's
successor table (``decode/invalid_table``), under the trie (``decode/invalid_trie``, 0 by
construction) and unconstrained (``decode/invalid_free``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.config import FRACTION, NON_NEGATIVE, POSITIVE_INT, check_fields
from harness.data import Dataset
from harness.errors import HarnessError
from harness.features import FeatureCache
from harness.io import atomic_write
from harness.registry import FitContext, register_model
from harness.tasks import TaskType
from harness.tasks.recommendation import ListRecommender, Recommendations, fuse, training_sequences
from harness.trainer import Trainer
from models.clip_encoder import encode, encode_item_images, load_clip, tokenize, weights_fingerprint
from models.rqvae_t5.codes import all_code_tokens, code_tokens, level_letters, resolve_collisions, write_index
from models.rqvae_t5.rqvae import RQVAEConfig, check_rqvae_config, train_rqvae
from models.rqvae_t5.seq2seq import TASK_MODALITIES, TASKS, Automaton, CodeVocabulary, Seq2SeqSamples, \
    T5Recommender, beam_search, build_t5, build_tokenizer  # fmt: skip
from models.rqvae_t5.trie import CodeTrie, SuccessorTable

__all__ = ["RQVAET5Config", "RQVAET5", "rqvae_t5", "search_space", "item_embeddings", "semantic_ids"]

MODALITIES = ("text", "image")
TEXT_FIELDS = "title+genres+description"  # what an item's text holds, part of its embedding's cache key
INDEX_FILES = {"text": "index_lemb", "image": "index_vitemb"}  # MQL4GRec's names
DECODE_TASKS = {"text": ("seqrec", "fusionseqrec"), "image": ("seqimage",)}  # the lists decoded, by preference


@dataclass
class RQVAET5Config:
    modalities: list = field(default_factory=lambda: ["text", "image"])  # code sets: text and/or image
    text_encoder: str = "tfidf"  # tfidf, clip, or a transformers encoder directory (e.g. all-MiniLM-L6-v2)
    text_dim: int = 256  # TF-IDF + SVD components (tfidf only)
    clip_model: str = "ViT-Tiny-16-64"  # open_clip architecture for image (and clip text) features
    pretrained: str | None = None  # open_clip tag or checkpoint file; None: random init (offline default)
    init_seed: int = 0  # seeds a random CLIP, so every fold shares one encoder and its cache
    text_embeddings: str | None = None  # a supplied .npy [items, D] in item-id order, instead of encoding
    image_embeddings: str | None = None
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    t5_pretrained: str | None = None  # a local T5 directory (weights + tokenizer); None: from the config below
    d_model: int = 64  # sized for a CPU; MQL4GRec's T5-small: 512, d_ff 2048, 6 + 6 layers, 8 heads
    d_ff: int = 128
    num_layers: int = 2  # encoder and decoder blocks each
    num_heads: int = 4
    dropout: float = 0.1
    scale_decoder_output: bool = False  # the original T5's d_model ** -0.5 before the (shared) output layer
    # the seed's task mix; None: seqrec, seqimage, item2image, image2item as the modalities allow
    # (fusionseqrec, whose inputs are twice as long, one value away: model.tasks=[seqrec,fusionseqrec,...])
    tasks: list | None = None
    max_his_len: int = 20  # history items in an input (the seed's)
    positions_per_user: int = 5  # next-item targets per training sequence and epoch
    positions: str = "random"  # which: drawn anew each epoch from the whole sequence, or its most "recent"
    num_beams: int = 20  # beams per modality (the seed's); also the list length per modality
    alpha: float = 0.5  # late fusion: weight of the text-code list's log-probabilities
    generate_batch_size: int = 64  # users per beam search call
    constraint_check_users: int = 64  # validation users decoded under the table and unconstrained (explain)


# ----------------------------------------------------------------------------------------------
# Stages 1-3: embeddings, RQ-VAE, codes (catalogue-level, cached, shared by the folds)
# ----------------------------------------------------------------------------------------------


def item_embeddings(dataset: Dataset, modality: str, config: RQVAET5Config, ctx: FitContext) -> np.ndarray:
    """``[n_items - 1, D]`` float32 embeddings of items ``1 .. n_items - 1`` (row ``i - 1`` is item ``i``)."""
    n_items = int(dataset.meta["n_items"])
    supplied = config.text_embeddings if modality == "text" else config.image_embeddings
    if supplied:
        return _load_npy(supplied, dataset, f"model.{modality}_embeddings")
    cache = FeatureCache(ctx.cache_dir, ctx.log)
    if modality == "image":
        features, _ = encode_item_images(dataset, n_items, config.clip_model, config.pretrained, config.init_seed, ctx,
                                         what="they share the codes nearest to zero")  # fmt: skip
        return features[1:].float().numpy()
    texts = _item_texts(dataset, n_items)
    if config.text_encoder == "tfidf":
        key = {"encoder": "tfidf-svd", "dim": config.text_dim, "data": dataset.fingerprint, "rows": "item_id",
               "text": TEXT_FIELDS}
        return cache.get_or_compute("tfidf-items", key, lambda: _tfidf(texts, config.text_dim)).numpy()
    if config.text_encoder == "clip":
        torch.manual_seed(config.init_seed)
        bundle = load_clip(config.clip_model, config.pretrained, log=ctx.log)
        model = bundle.model.to(ctx.device).eval()
        key = {"clip": bundle.name, "pretrained": bundle.pretrained, "weights": weights_fingerprint(model),
               "data": dataset.fingerprint, "rows": "item_id", "text": TEXT_FIELDS}  # fmt: skip
        return cache.get_or_compute("clip-item-text", key, lambda: encode(
            model.encode_text, tokenize(texts, bundle.tokenizer), 256, ctx.device, "encoding item texts", False,
        )).float().numpy()  # fmt: skip
    from models.text_encoder import encode_with_transformer

    return encode_with_transformer(config.text_encoder, texts, device=ctx.device, cache=cache, progress=False,
                                   log=ctx.log).float().numpy()  # fmt: skip


def _item_texts(dataset: Dataset, n_items: int) -> list[str]:
    """Title, genres and description of items ``1 .. n_items - 1``, in id order.

    The genres (MovieLens genres, Amazon sub-categories) are part of the text as in TIGER's item
    prompts: without them the first code level groups the MovieLens items by genre with an NMI of
    0.56 (k-means on the TF-IDF features, 32 clusters), with them 0.69.
    """
    items = dataset.meta["items"].set_index("item_id")

    def column(name: str) -> pd.Series:
        return items.get(name, pd.Series(dtype=str)).reindex(range(1, n_items)).fillna("").astype(str)

    genres = column("genres").str.replace("|", ", ", regex=False)
    return [". ".join(p for p in parts if p) for parts in zip(column("title"), genres, column("description"))]


def _tfidf(texts: list[str], dim: int) -> torch.Tensor:
    """Unit-length TF-IDF + truncated-SVD (LSA) embeddings: deterministic, no weights to download."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(sublinear_tf=True).fit_transform(texts)
    components = max(1, min(dim, matrix.shape[1] - 1, len(texts) - 1))
    dense = TruncatedSVD(components, algorithm="arpack", random_state=0).fit_transform(matrix)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(dense.astype(np.float32))


def _load_npy(path: str, dataset: Dataset, where: str) -> np.ndarray:
    """A supplied embedding matrix, rows in item-id order; an MQL4GRec ``.emb-*.npy`` is in its own
    item-index order (the items' ``raw_item_id``), so its rows are picked by that index."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise HarnessError(f"{where}: cannot read {path!r} as a .npy array ({' '.join(str(exc).split())[:120]}).") from exc
    items = dataset.meta["items"].sort_values("item_id")
    mql4grec = dataset.meta.get("format") == "mql4grec"
    rows = int(items["raw_item_id"].astype(int).max()) + 1 if mql4grec else len(items)
    if array.ndim != 2 or (array.shape[0] < rows if mql4grec else array.shape[0] != rows):
        order = "item-index" if mql4grec else "item-id"
        raise HarnessError(f"{where}: {path!r} has shape {array.shape}; expected [{rows}, D], one row per catalogue "
                           f"item in {order} order.")  # fmt: skip
    if mql4grec:
        array = array[items["raw_item_id"].astype(int).to_numpy()]
    if not np.isfinite(array).all():
        raise HarnessError(f"{where}: {path!r} holds NaN or infinite values.")
    return array.astype(np.float32)


def semantic_ids(embeddings: np.ndarray, modality: str, rqvae: RQVAEConfig, dataset_name: str, ctx: FitContext,
                 progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Unique codes ``[items, L]`` for ``embeddings`` and the report of their RQ-VAE and collision resolution.

    Cached under a key of the embeddings' bytes and the RQ-VAE config; the MQL4GRec index file
    and the report (JSON) are written beside the cached codes.
    """
    digest = hashlib.sha256(np.ascontiguousarray(embeddings).tobytes()).hexdigest()[:20]
    key = {"embeddings": digest, "shape": list(embeddings.shape), "rqvae": dataclasses.asdict(rqvae)}
    cache = FeatureCache(ctx.cache_dir, ctx.log)
    entry = cache.path(f"rqvae-{modality}", key)
    report_path = entry.with_suffix(".json")

    def compute() -> torch.Tensor:
        model, history = train_rqvae(embeddings, rqvae, device=ctx.device, progress=progress)
        codes, distances = model.encode_codes(torch.from_numpy(embeddings).to(ctx.device))
        unique, resolution = resolve_collisions(codes.cpu().numpy(), [d.cpu().numpy() for d in distances])
        last = history[-1] if history else {}
        best = min(history, key=lambda h: (h["collision_rate"], h["recon_loss"])) if history else {}
        report = {"recon_loss": best.get("recon_loss"), "collision_rate": resolution["collision_rate_before"],
                  "items_moved": resolution["items_moved"], "changed_per_level": resolution["changed_per_level"],
                  "utilisation": best.get("utilisation"), "best_epoch": best.get("epoch"),
                  "final_recon_loss": last.get("recon_loss")}  # fmt: skip
        atomic_write(report_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        index = entry.parent / f"{entry.stem}/{dataset_name}.{INDEX_FILES[modality]}.json"
        write_index(index, unique, level_letters(modality, rqvae.num_levels))
        ctx.log(f"{modality} semantic IDs: collision rate {report['collision_rate']:.3f} before resolution, "
                f"{report['items_moved']} items moved; index {index}")  # fmt: skip
        return torch.from_numpy(unique)

    codes = cache.get_or_compute(f"rqvae-{modality}", key, compute).numpy()
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return codes, report


# ----------------------------------------------------------------------------------------------
# The family
# ----------------------------------------------------------------------------------------------


class RQVAET5(ListRecommender):
    progress: bool = True

    def __init__(self, config: RQVAET5Config):
        self.config = config
        self.modalities = tuple(config.modalities)
        self.tasks = tuple(config.tasks) if config.tasks else tuple(
            t for t in TASKS if t != "fusionseqrec" and set(TASK_MODALITIES[t]) <= set(self.modalities))  # fmt: skip
        # the first trained sequence task that outputs each modality's codes decodes its list
        self.decoders = {m: next(t for t in DECODE_TASKS[m] if t in self.tasks)
                         for m in self.modalities if any(t in self.tasks for t in DECODE_TASKS[m])}  # fmt: skip
        self.list_length = config.num_beams
        self._explained: dict[str, float] = {}

    def fit_recommender(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        config, dataset = self.config, ctx.dataset
        item_tokens, self._explained = {}, {}
        for modality in self.modalities:
            embeddings = item_embeddings(dataset, modality, config, ctx)
            codes, report = semantic_ids(embeddings, modality, config.rqvae, dataset.name, ctx)
            item_tokens[modality] = code_tokens(codes, level_letters(modality, config.rqvae.num_levels))
            self._explained.update(_flatten(f"rqvae/{modality}", report))
        vocabulary = [t for m in self.modalities for t in all_code_tokens(level_letters(m, config.rqvae.num_levels),
                                                                          config.rqvae.codebook_size)]  # fmt: skip
        self.tokenizer = tokenizer = build_tokenizer(vocabulary, config.t5_pretrained)
        self.vocabulary = CodeVocabulary.from_tokenizer(tokenizer, item_tokens)
        self.tries = {m: CodeTrie(self.vocabulary.codes[m][1:], self.vocabulary.eos) for m in self.modalities}
        self.automata = {m: Automaton.from_transitions(*trie.transitions()) for m, trie in self.tries.items()}
        self.model = T5Recommender(build_t5(tokenizer, d_model=config.d_model, d_ff=config.d_ff,
                                            num_layers=config.num_layers, num_heads=config.num_heads,
                                            dropout=config.dropout, scale_decoder_output=config.scale_decoder_output,
                                            pretrained=config.t5_pretrained, seed=ctx.seed))  # fmt: skip
        samples = Seq2SeqSamples(self.vocabulary, self.tasks, training_sequences(train, valid).tolist(),
                                 np.arange(1, self.n_items), config.max_his_len)  # fmt: skip
        batches = samples.batches(ctx.train_config.batch_size, config.positions_per_user,
                                  config.positions == "recent", ctx.seed)  # fmt: skip
        ctx.log(f"rqvae_t5: {batches.rows_per_epoch} training pairs per epoch of {len(samples)} "
                f"({', '.join(self.tasks)}), T5 "
                f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters")  # fmt: skip
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        trainer.fit(self.model, samples, evaluate=lambda module: self.validation_score(valid, ctx),
                    collate_fn=samples.collate, batch_sampler=batches)  # fmt: skip
        self._explained.update(self._constraint_report(valid))

    def recommend(self, part: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
        lists = [self._decode(part, modality, self.automata[modality]) for modality in self.decoders]
        if len(lists) == 1:
            return lists[0].items, lists[0].scores
        fused = fuse(lists, [self.config.alpha, 1.0 - self.config.alpha], n=sum(r.items.shape[1] for r in lists))
        return fused.items, fused.scores

    def _decode(self, part: pd.DataFrame, modality: str, automaton: Automaton) -> Recommendations:
        """Each row's beams as items (0 for a beam that is no item) with their log-probabilities."""
        task = self.decoders[modality]
        inputs = [self.vocabulary.history_input(task, h, self.config.max_his_len) for h in part["history"]]
        histories = [np.asarray(h, np.int64) - 1 for h in part["history"]]  # item id i is the trie's item i - 1
        codes, scores = beam_search(self.model.t5, inputs, self.config.rqvae.num_levels, self.config.num_beams,
                                    automaton, eos=self.vocabulary.eos, pad=self.vocabulary.pad, device=self.device,
                                    batch_size=self.config.generate_batch_size, exclude=histories)  # fmt: skip
        trie = self.tries[modality]
        found = [[trie.item_of(beam) for beam in row] for row in codes]
        items = np.array([[-1 if i is None else i for i in row] for row in found], dtype=np.int64) + 1
        items[~np.isfinite(scores)] = 0  # fewer paths than beams
        return Recommendations(items, np.where(items > 0, scores, -np.inf).astype(np.float32))

    @torch.no_grad()
    def _constraint_report(self, valid: pd.DataFrame) -> dict[str, float]:
        """Share of beams that are no item, per constraint, on a few validation users (the seed's table leaks)."""
        self._eval_mode()
        part = valid.iloc[: self.config.constraint_check_users]
        report: dict[str, float] = {}
        table_of = lambda m: Automaton.from_transitions(  # noqa: E731
            *SuccessorTable(self.vocabulary.codes[m][1:], self.vocabulary.eos).transitions())
        free = Automaton.unconstrained(len(self.tokenizer), self.vocabulary.pad)
        for modality in self.decoders:
            for name, automaton in (("trie", self.automata[modality]), ("table", table_of(modality)), ("free", free)):
                beams = self._decode(part, modality, automaton).items
                report[f"decode/invalid_{name}/{modality}"] = float((beams == 0).mean())
        return report

    def explain(self) -> dict[str, float]:
        return dict(self._explained)

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.model.load_state_dict(state_dict)


def _flatten(prefix: str, report: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in report.items():
        if isinstance(value, (list, tuple)):
            out.update({f"{prefix}/{key}/level_{i}": float(v) for i, v in enumerate(value) if v is not None})
        elif value is not None:
            out[f"{prefix}/{key}"] = float(value)
    return out


def search_space(trial) -> dict[str, Any]:
    """Code levels and size, latent width, the last level's SK epsilon, T5 width and depth, beams, positions per epoch."""
    levels = trial.suggest_int("model.rqvae.num_levels", 3, 4)
    epsilon = trial.suggest_categorical("model.rqvae.sk_epsilon_last", [0.0, 0.003, 0.01])
    d_model = trial.suggest_categorical("model.d_model", [64, 128, 256])
    return {
        "model": {
            "rqvae": {"num_levels": levels, "codebook_size": trial.suggest_categorical("model.rqvae.codebook_size", [64, 256]),
                      "e_dim": trial.suggest_categorical("model.rqvae.e_dim", [16, 32, 64]),
                      "sk_epsilons": [0.0] * (levels - 1) + [epsilon]},  # fmt: skip
            "d_model": d_model, "d_ff": 2 * d_model,
            "num_layers": trial.suggest_int("model.num_layers", 1, 4),
            "num_beams": trial.suggest_categorical("model.num_beams", [20, 50, 100]),
            "positions_per_user": trial.suggest_categorical("model.positions_per_user", [5, 10, 20]),
        },
        "train": {"lr": trial.suggest_float("train.lr", 3e-4, 3e-3, log=True)},
    }


@register_model(
    "rqvae_t5",
    task=TaskType.SEQUENTIAL_RECOMMENDATION,
    config=RQVAET5Config,
    dataset="movielens",
    train_defaults={"epochs": 8, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "patience": 3,
                    "warmup_ratio": 0.05},  # fmt: skip
    search_space=search_space,
)
def rqvae_t5(config: RQVAET5Config) -> RQVAET5:
    """Generative recommendation: RQ-VAE semantic IDs of text and image embeddings, T5 with trie-constrained beams."""
    bad = [m for m in config.modalities if m not in MODALITIES]
    if not config.modalities or bad or len(set(config.modalities)) != len(config.modalities):
        raise HarnessError(f"model.modalities must be distinct values of {', '.join(MODALITIES)}, got {config.modalities!r}.")
    if config.tasks is not None:
        unknown = [t for t in config.tasks if t not in TASKS]
        if unknown or not config.tasks:
            raise HarnessError(f"model.tasks must be a non-empty list of {', '.join(TASKS)}, got {config.tasks!r}.")
        missing = [t for t in config.tasks if not set(TASK_MODALITIES[t]) <= set(config.modalities)]
        if missing:
            raise HarnessError(f"model.tasks {missing} need the image and text codes; model.modalities is {config.modalities}.")
        if not any(t in config.tasks for m in config.modalities for t in DECODE_TASKS[m]):
            raise HarnessError("model.tasks must include a sequence task of model.modalities (seqrec, seqimage or "
                               "fusionseqrec); the translation tasks alone decode no next item.")
    if config.d_model % config.num_heads:
        raise HarnessError(f"model.d_model ({config.d_model}) must be a multiple of model.num_heads ({config.num_heads}).")
    check_rqvae_config(config.rqvae, where="model.rqvae")
    check_fields(config, POSITIVE_INT, "d_model", "d_ff", "num_layers", "num_heads", "max_his_len",
                 "positions_per_user", "num_beams", "generate_batch_size", "text_dim")  # fmt: skip
    check_fields(config, NON_NEGATIVE, "constraint_check_users")
    check_fields(config, FRACTION, "dropout")
    if config.positions not in ("random", "recent"):
        raise HarnessError(f"model.positions must be random or recent, got {config.positions!r}.")
    if not 0 <= config.alpha <= 1:
        raise HarnessError(f"model.alpha must be in [0, 1], got {config.alpha!r}.")
    if config.text_encoder not in ("tfidf", "clip") and not Path(config.text_encoder).exists():
        raise HarnessError(f"model.text_encoder must be tfidf, clip or a local encoder directory, got "
                           f"{config.text_encoder!r} (no such directory).")  # fmt: skip
    return RQVAET5(config)

"""The ``retrieval`` task (image ↔ text): a row is an image with its captions.

A prediction is an :class:`Embeddings`: per row, the image's embedding and its captions'
embeddings, compared by cosine similarity. Metrics come from
:func:`harness.metrics.retrieval_metrics` (Recall@1/5/10 both ways, rsum, mAP), computed within
one *gallery*: the rows being scored (a validation fold, or the test set). Embeddings of different
models live in different spaces, so each row also carries the ``space`` it was embedded in (the
fold model that predicted it): out-of-fold rows are scored space by space and the scores averaged,
weighted by rows -- never one fold model's images against another's captions.

Averaging fold models (and blending runs) concatenates their L2-normalised embeddings, each
scaled by the square root of its weight: the cosine similarity of the concatenations is then the
weighted mean of the models' similarities, so a blend ranks by averaged similarity, in any
embedding sizes. The submission lists, for each test image, its 10 most similar test captions.

Families subclass :class:`ImageTextRetriever`: they build a network with an image and a text
tower and a tokenizer; the core feeds image–caption pairs (one caption of each image per epoch,
drawn anew every epoch), trains through the one loop, and embeds every image and caption.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from harness.blending import normalise_weights
from harness.data.images import load_pixels
from harness.errors import HarnessError
from harness.metrics import query_gallery_metrics, retrieval_metrics
from harness.pixels import Standardiser, augment, check_augmentation
from harness.registry import Family, FitContext
from harness.submissions import RankedLists, check_header, match_rows, parse_lists
from harness.tasks import TaskType
from harness.trainer import Trainer

__all__ = ["Embeddings", "RetrievalTask", "TASK", "SUBMISSION_K", "ImageTextRetriever", "concatenate"]

SUBMISSION_K = 10  # captions listed per test image in the submission
REPORT = ("rsum", "i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_map", "t2i_map")


@dataclass
class Embeddings:
    """Per row: ``image`` ``[N, D]``, ``text`` ``[N, K, D]`` (its captions, padded to the most
    captions of a row), ``text_mask`` ``[N, K]`` (which caption slots are real) and ``space``
    ``[N]`` (rows with equal values were embedded by the same model; only they are compared)."""

    image: np.ndarray
    text: np.ndarray
    text_mask: np.ndarray
    space: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.text = np.asarray(self.text, dtype=np.float32)
        self.text_mask = np.asarray(self.text_mask, dtype=bool)
        self.space = np.asarray(self.space, dtype=np.int64)
        n = len(self.image)
        if self.image.ndim != 2 or self.text.ndim != 3 or self.text.shape[::2] != (n, self.image.shape[1]):
            raise ValueError(f"image must be [N, D] and text [N, K, D], got {self.image.shape} and {self.text.shape}")
        if self.text_mask.shape != self.text.shape[:2] or self.space.shape != (n,):
            raise ValueError(f"text_mask must be [N, K] and space [N], got {self.text_mask.shape} and {self.space.shape}")
        if not (np.isfinite(self.image).all() and np.isfinite(self.text[self.text_mask]).all()):
            raise HarnessError("Retrieval embeddings contain NaN or infinite values.")

    @classmethod
    def from_lists(cls, image: np.ndarray, texts: Sequence[np.ndarray], space: int = 0) -> "Embeddings":
        """From ``[N, D]`` image embeddings and one ``[k_i, D]`` array of caption embeddings per row."""
        image = np.asarray(image, dtype=np.float32)
        k = max((len(t) for t in texts), default=0)
        text = np.zeros((len(texts), k, image.shape[1]), np.float32)
        mask = np.zeros((len(texts), k), bool)
        for row, captions in enumerate(texts):
            text[row, : len(captions)] = captions
            mask[row, : len(captions)] = True
        return cls(image, text, mask, np.full(len(image), space))

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: np.ndarray) -> "Embeddings":
        return Embeddings(self.image[index], self.text[index], self.text_mask[index], self.space[index])

    def normalised(self) -> "Embeddings":
        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

        return Embeddings(unit(self.image), unit(self.text) * self.text_mask[..., None], self.text_mask, self.space)


def concatenate(members: Sequence[Embeddings], weights: Sequence[float] | None = None) -> Embeddings:
    """Members' normalised embeddings side by side, scaled by √weight: cosine = weighted mean cosine."""
    first = members[0]
    for other in members[1:]:
        if len(other) != len(first) or not np.array_equal(other.text_mask, first.text_mask):
            raise HarnessError("Retrieval predictions to blend must cover the same rows and captions.")
        if not np.array_equal(other.space, first.space):
            raise HarnessError("Retrieval predictions to blend must come from models on the same folds.")
    w = normalise_weights(np.ones(len(members)) if weights is None else weights, len(members))
    parts = [m.normalised() for m in members]
    image = np.concatenate([np.sqrt(wi) * p.image for wi, p in zip(w, parts)], axis=1)
    text = np.concatenate([np.sqrt(wi) * p.text for wi, p in zip(w, parts)], axis=2)
    return Embeddings(image, text, first.text_mask, first.space)


class RetrievalTask:
    """Prediction handling of ``retrieval`` (the adapter methods of :mod:`harness.tasks`)."""

    fold_blendable = False  # a run's test embeddings are already its fold models' concatenation

    def metrics(self, predictions: Embeddings) -> dict[str, float]:
        """:data:`REPORT` of the predictions, per embedding space, averaged weighted by rows."""
        totals = dict.fromkeys(REPORT, 0.0)
        for space in np.unique(predictions.space):
            part = predictions.take(np.flatnonzero(predictions.space == space))
            rows, slots = np.nonzero(part.text_mask)
            result = retrieval_metrics(part.image, part.text[rows, slots], rows)
            for name in REPORT:
                totals[name] += result[name] * len(part) / len(predictions)
        return totals

    def score(self, metric, dataset, rows: pd.DataFrame, predictions: Embeddings | RankedLists) -> float:
        """``metric`` of embeddings of ``rows``, or of a submission's caption lists for the images ``rows``."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        if isinstance(predictions, RankedLists):
            return float(metric.fn(self._listed_metrics(dataset, rows, predictions)))
        return float(metric.fn(self.metrics(predictions)))

    def _listed_metrics(self, dataset, rows: pd.DataFrame, lists: RankedLists) -> dict[str, float]:
        """Image → text Recall@1..:data:`SUBMISSION_K` and mAP of caption lists over every test caption."""
        test_ids = dataset.test[dataset.id_col].astype(str)
        owner = np.repeat(np.arange(len(test_ids)), dataset.test["caption_ids"].map(len).to_numpy())
        images = pd.Index(test_ids).get_indexer(rows[dataset.id_col].astype(str))
        result = query_gallery_metrics(lists.distances, images, owner, max_rank=SUBMISSION_K)
        recalls = {f"i2t_r@{k}": float(result["cmc"][k - 1]) for k in range(1, SUBMISSION_K + 1)}
        return {"i2t_map": result["map"], **recalls}

    def report(self, dataset, rows: pd.DataFrame, predictions: Embeddings) -> dict[str, float]:
        return self.metrics(predictions)

    def baseline(self, dataset, train: pd.DataFrame, valid: pd.DataFrame) -> Embeddings:
        """Random embeddings (fixed seed): chance-level retrieval in the same gallery."""
        rng = np.random.default_rng(0)
        texts = [rng.standard_normal((len(c), 64)) for c in valid["captions"]]
        return Embeddings.from_lists(rng.standard_normal((len(valid), 64)), texts)

    def check_folds(self, dataset, folds: pd.DataFrame) -> None:
        """A row holds an image with all its captions, so no fold split can separate them; ids must be unique."""
        duplicated = dataset.train[dataset.id_col].duplicated()
        if duplicated.any():
            image = dataset.train[dataset.id_col][duplicated].iloc[0]
            raise HarnessError(f"{dataset.name}: image {image!r} is in several rows; its captions could cross folds.")

    def assemble(self, n_rows: int, parts: Sequence[tuple[np.ndarray, Embeddings]]) -> Embeddings:
        """Out-of-fold predictions, each fold's rows in its own embedding space (numbered by part)."""
        order = np.concatenate([index for index, _ in parts])
        if len(order) != n_rows or len(np.unique(order)) != n_rows:
            raise ValueError("fold parts must cover every training row exactly once")
        k = max(p.text.shape[1] for _, p in parts)
        d = parts[0][1].image.shape[1]
        if any(p.image.shape[1] != d for _, p in parts):
            raise HarnessError("The fold models' embeddings differ in size; a family must embed in one dimension.")
        image, text = np.zeros((n_rows, d), np.float32), np.zeros((n_rows, k, d), np.float32)
        mask, space = np.zeros((n_rows, k), bool), np.zeros(n_rows, np.int64)
        for number, (index, p) in enumerate(parts):
            image[index], text[index, : p.text.shape[1]] = p.image, p.text
            mask[index, : p.text.shape[1]], space[index] = p.text_mask, number
        return Embeddings(image, text, mask, space)

    def average(self, predictions: Sequence[Embeddings]) -> Embeddings:
        return concatenate(predictions)

    def take(self, predictions: Embeddings, index: np.ndarray) -> Embeddings:
        return predictions.take(index)

    def to_frame(self, ids: pd.Series, predictions: Embeddings, name: str = "prediction") -> pd.DataFrame:
        """``{name}_image`` (a list per row), ``{name}_text`` (the row's real captions' embeddings,
        flattened), ``{name}_space``."""
        texts = [t[m].reshape(-1) for t, m in zip(predictions.text, predictions.text_mask)]
        return pd.DataFrame({"id": ids.to_numpy(), f"{name}_image": list(predictions.image), f"{name}_text": texts,
                             f"{name}_space": predictions.space})  # fmt: skip

    def from_frame(self, frame: pd.DataFrame, name: str = "prediction") -> Embeddings | None:
        if f"{name}_image" not in frame.columns:
            return None
        image = np.stack(frame[f"{name}_image"])
        texts = [np.asarray(t, np.float32).reshape(-1, image.shape[1]) for t in frame[f"{name}_text"]]
        out = Embeddings.from_lists(image, texts)
        out.space = frame[f"{name}_space"].to_numpy(np.int64)
        return out

    def blend(self, method: str, oofs: Sequence[Embeddings], tests: Sequence[Embeddings], *, weights=None,
              **context) -> tuple[Embeddings, Embeddings, list[float] | None]:  # fmt: skip
        """``mean`` / ``weighted_mean``: similarities averaged (embeddings concatenated, see :func:`concatenate`)."""
        if method not in ("mean", "weighted_mean"):
            raise HarnessError(f"Retrieval runs blend with mean or weighted_mean (averaged similarities), not {method!r}.")
        if isinstance(weights, str):
            raise HarnessError("--weights optimize is for row-wise predictions; give retrieval runs explicit weights.")
        w = None if weights is None else [float(x) for x in normalise_weights(weights, len(oofs))]
        return concatenate(oofs, w), concatenate(tests, w), w

    def submission(self, dataset, ids: pd.Series, predictions: Embeddings) -> pd.DataFrame:
        """``id, captions``: each test image's :data:`SUBMISSION_K` most similar test caption ids, best first."""
        p = predictions.normalised()
        rows, slots = np.nonzero(p.text_mask)
        caption_ids = np.concatenate([np.asarray(c, dtype=object) for c in dataset.test["caption_ids"]])
        if len(caption_ids) != len(rows):
            raise HarnessError(f"{dataset.name}: the test predictions do not embed every test caption.")
        similarity = p.image @ p.text[rows, slots].T
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :SUBMISSION_K]
        return pd.DataFrame({"id": ids.to_numpy(), "captions": [" ".join(caption_ids[row]) for row in top]})

    def submission_keys(self, dataset) -> pd.Series:
        """A submission's first column: the test image ids (the index: their test rows)."""
        return dataset.test[dataset.id_col].astype(str).rename("id")

    def read_submission(self, dataset, frame: pd.DataFrame, source: str) -> RankedLists:
        """The caption lists of a file in the format of :meth:`submission`, in the order of
        :meth:`submission_keys`; a format violation is a one-line error naming ``source``, the row and column."""
        check_header(frame, ["id", "captions"], source)
        rows = match_rows(frame, self.submission_keys(dataset), source, "test image", dataset.name)
        captions = [str(c) for ids in dataset.test["caption_ids"] for c in ids]
        lists = parse_lists(frame, "captions", {c: i for i, c in enumerate(captions)}, source,
                            f"a test caption of {dataset.name}", SUBMISSION_K)  # fmt: skip
        return RankedLists.from_lists([lists[row] for row in rows], len(captions))

    def check_submission_metric(self, dataset, metric) -> None:
        """A submission ranks captions per image: image → text metrics score it, the others need text → image."""
        scored = [f"i2t_r@{k}" for k in range(1, SUBMISSION_K + 1)] + ["i2t_map"]
        if metric.name not in scored:
            raise HarnessError(f"A {dataset.name} submission ranks {SUBMISSION_K} captions per image (image to "
                               f"text): it scores i2t_r@1 to i2t_r@{SUBMISSION_K} and i2t_map, not {metric.name} "
                               "(pass --metric).")  # fmt: skip


TASK = RetrievalTask()


# ----------------------------------------------------------------------------
# The family base: an image tower and a text tower in one space
# ----------------------------------------------------------------------------


class ImageTextRetriever(Family):
    """A family that embeds images and captions in one space; the core pairs, trains and embeds.

    Subclasses implement :meth:`build_network`, returning a module with ``encode_image(images) ->
    [B, D]`` (images float ``[B, C, H, W]``, per-channel standardised), ``encode_text(tokens) ->
    [B, D]`` and ``training_step((images, tokens)) -> loss`` for a batch of matching pairs, and
    :meth:`tokenize` (captions → ``[N, L]`` token ids). Each epoch pairs every training image with
    one of its captions, drawn from torch's seeded RNG.
    """

    task = TaskType.RETRIEVAL
    augmentation: str = "crop"  # training augmentation; no flips: captions say "left of"
    predict_batch_size: int = 256

    @abc.abstractmethod
    def build_network(self, dataset, ctx: FitContext) -> nn.Module:
        """The module to train for ``dataset`` (read ``meta["image_shape"]``, ...)."""

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), L]`` token ids of the captions."""

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        check_augmentation(self.augmentation)
        torch.manual_seed(ctx.seed)
        self.device, self._dataset = torch.device(ctx.device), ctx.dataset
        pixels = torch.from_numpy(np.ascontiguousarray(load_pixels(ctx.dataset, train)))
        self.images = Standardiser(pixels)  # this fold's training rows only
        self.network = self.build_network(ctx.dataset, ctx)
        counts = train["captions"].map(len).to_numpy().copy()  # pandas may hand out a read-only view
        if (counts == 0).any():
            raise HarnessError(f"{ctx.dataset.name}: image {train['id'].iloc[int(np.argmax(counts == 0))]!r} has no caption.")
        tokens = self.tokenize([c for captions in train["captions"] for c in captions])
        first = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self._pairing = (tokens, first, torch.as_tensor(counts))
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        self.train_result = trainer.fit(
            self.network, TensorDataset(pixels, torch.arange(len(train))), collate_fn=self._training_batch,
            evaluate=lambda module: TASK.score(ctx.metric, ctx.dataset, valid, self.predict(valid)),
        )  # fmt: skip

    @torch.no_grad()
    def predict(self, part: pd.DataFrame) -> Embeddings:
        """Every row's image embedding and all its captions' embeddings."""
        self.network.eval()
        pixels = load_pixels(self._dataset, part)
        image = torch.cat([
            self.network.encode_image(self.images(pixels[i : i + self.predict_batch_size]).to(self.device)).float().cpu()
            for i in range(0, len(pixels), self.predict_batch_size)
        ])  # fmt: skip
        captions = [c for row in part["captions"] for c in row]
        tokens = self.tokenize(captions) if captions else torch.zeros((0, 1), dtype=torch.long)
        text = torch.cat([
            self.network.encode_text(tokens[i : i + self.predict_batch_size].to(self.device)).float().cpu()
            for i in range(0, len(tokens), self.predict_batch_size)
        ]).numpy()  # fmt: skip
        bounds = np.cumsum([0, *part["captions"].map(len)])
        return Embeddings.from_lists(image.numpy(), [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])])

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.network.load_state_dict(state_dict)

    def _training_batch(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, index = (torch.stack(column) for column in zip(*rows))
        tokens, first, counts = self._pairing
        pick = first[index] + (torch.rand(len(index)) * counts[index]).long()  # one caption per image
        return augment(self.images(pixels), self.augmentation), tokens[pick]


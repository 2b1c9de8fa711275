"""The ``reid`` task (person re-identification): a row is one image of an identity, seen by one camera.

A prediction is a :class:`ReIDEmbeddings`: one embedding per row, compared by cosine distance,
and the ``space`` it was embedded in (the fold model that predicted it). Scoring follows the
protocol re-ID papers use (torchreid's / fast-reid's ``eval_market1501``): for each query, gallery
entries with the query's identity *and* camera are removed, queries left without a match are
skipped and counted, and mAP, CMC Rank-1/5/10 and mINP come from
:func:`harness.metrics.reid_metrics` (memory-bounded over any query × gallery size).

Which rows are queries:

* the test set: the dataset's own ``is_query`` / ``is_gallery`` columns (Market-1501's ``query/``
  and ``bounding_box_test/``; RGBNT201's test folder is both);
* a validation fold: :func:`harness.data.reid.split_query_gallery` of the fold's rows, at most one
  query per identity and camera, each with its identity in the gallery under another camera.

Folds group by identity (no identity in two folds, checked), so a validation fold holds identities
the fold model never saw, as the test set does. Out-of-fold rows are scored fold model by fold
model (each fold its own gallery) and averaged, weighted by evaluated queries.

Metric names ending in ``_rerank`` (``map_rerank``, ``rank1_rerank``, ...) name the k-reciprocal
re-ranking protocol (:mod:`harness.reranking`): the same metrics on re-ranked distances.

Averaging fold models and blending runs concatenate the L2-normalised embeddings, each scaled by
the square root of its weight: the cosine distance of the concatenations is then exactly the
weighted mean of the members' cosine distances, so "average the distance matrices" and "concatenate
the normalised embeddings" are one operation here, in any embedding sizes. The submission lists,
for each test query, its :data:`SUBMISSION_K` nearest gallery images, nearest first.

Families subclass :class:`ReIDFamily`: they build a network from images (one per modality) to an
embedding; the core feeds P identities × K images per batch (:class:`PKSampler`), trains through
the one loop and embeds every row.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Sampler, TensorDataset

from harness.blending import normalise_weights
from harness.data.reid import colour_histogram_features, load_reid_pixels, modality_mask, split_query_gallery
from harness.errors import HarnessError
from harness.metrics import reid_from_distances, reid_metrics
from harness.pixels import Standardiser, augment, check_augmentation
from harness.registry import Family, FitContext
from harness.reranking import rerank_from_features
from harness.submissions import RankedLists, check_header, match_rows, parse_lists
from harness.tasks import TaskType
from harness.trainer import Trainer

__all__ = ["ReIDEmbeddings", "ReIDTask", "TASK", "SUBMISSION_K", "REPORT", "ReIDFamily", "PKSampler",
           "concatenate", "roles"]  # fmt: skip

SUBMISSION_K = 100  # gallery images listed per test query in the submission
REPORT = ("map", "rank1", "rank5", "rank10", "minp")
RERANK = "_rerank"  # suffix of the metric names scored on re-ranked distances


@dataclass
class ReIDEmbeddings:
    """Per row: ``features`` ``[N, D]`` and ``space`` ``[N]`` (rows with equal values were embedded
    by the same model; only they are compared)."""

    features: np.ndarray
    space: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.space = np.asarray(self.space, dtype=np.int64)
        if self.features.ndim != 2 or self.space.shape != (len(self.features),):
            raise ValueError(f"features must be [N, D] and space [N], got {self.features.shape} and {self.space.shape}")
        if not np.isfinite(self.features).all():
            raise HarnessError("Re-ID embeddings contain NaN or infinite values.")

    def __len__(self) -> int:
        return len(self.features)

    def take(self, index: np.ndarray) -> "ReIDEmbeddings":
        return ReIDEmbeddings(self.features[index], self.space[index])

    def normalised(self) -> np.ndarray:
        return self.features / np.maximum(np.linalg.norm(self.features, axis=1, keepdims=True), 1e-12)


def concatenate(members: Sequence[ReIDEmbeddings], weights: Sequence[float] | None = None) -> ReIDEmbeddings:
    """Members' normalised embeddings side by side, scaled by √weight: distance = weighted mean distance."""
    first = members[0]
    for other in members[1:]:
        if len(other) != len(first) or not np.array_equal(other.space, first.space):
            raise HarnessError("Re-ID predictions to blend must cover the same rows, from models on the same folds.")
    w = normalise_weights(np.ones(len(members)) if weights is None else weights, len(members))
    return ReIDEmbeddings(np.concatenate([np.sqrt(wi) * m.normalised() for wi, m in zip(w, members)], axis=1),
                          first.space)  # fmt: skip


def roles(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(is_query, is_gallery)`` of the rows: the dataset's own (test) or the validation split."""
    if "is_query" in rows.columns:
        return rows["is_query"].to_numpy(bool), rows["is_gallery"].to_numpy(bool)
    is_query = split_query_gallery(rows)
    return is_query, ~is_query


class ReIDTask:
    """Prediction handling of ``reid`` (the adapter methods of :mod:`harness.tasks`)."""

    fold_blendable = False  # a run's test embeddings are already its fold models' concatenation
    rerank_options: dict[str, Any] = {"k1": 20, "k2": 6, "lambda_value": 0.3}  # Zhong et al.'s Market-1501 setting

    def metrics(self, rows: pd.DataFrame, predictions: ReIDEmbeddings, rerank: bool = False) -> dict[str, float]:
        """:data:`REPORT` per embedding space, averaged weighted by evaluated queries, plus the counts."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        is_query, is_gallery = roles(rows)
        pids, cams = rows["pid"].to_numpy(np.int64), rows["camid"].to_numpy(np.int64)
        totals, n_queries, n_skipped = dict.fromkeys(REPORT, 0.0), 0, 0
        features = predictions.normalised()  # once, not per embedding space
        for space in np.unique(predictions.space):
            in_space = predictions.space == space
            q, g = np.flatnonzero(in_space & is_query), np.flatnonzero(in_space & is_gallery)
            if len(q) == 0 or len(g) == 0:
                continue
            if rerank:
                result = _reranked_metrics(features[q], features[g], (pids[q], pids[g]), (cams[q], cams[g]),
                                           self.rerank_options)  # fmt: skip
            else:
                result = reid_metrics(features[q], pids[q], cams[q], features[g], pids[g], cams[g], metric="cosine")
            for name in REPORT:
                totals[name] += result[name] * result["n_queries"]
            n_queries, n_skipped = n_queries + result["n_queries"], n_skipped + result["n_skipped"]
        if n_queries == 0:
            raise HarnessError("No query of these rows has its identity in the gallery under another camera.")
        out = {name: value / n_queries for name, value in totals.items()}
        return {**out, "n_queries": float(n_queries), "n_skipped": float(n_skipped)}

    def score(self, metric, dataset, rows: pd.DataFrame, predictions: ReIDEmbeddings | RankedLists) -> float:
        """``metric`` of embeddings of ``rows``, or of a submission's lists (``rows``: their queries,
        ranking the test set's gallery)."""
        if isinstance(predictions, RankedLists):
            gallery = dataset.test[roles(dataset.test)[1]]
            pids, cams = ([np.array(part[c], np.int64) for part in (rows, gallery)] for c in ("pid", "camid"))
            result = reid_from_distances(predictions.distances, *pids, *cams)
            return float(metric.fn(_report(result)))
        return float(metric.fn(self.metrics(rows, predictions, rerank=metric.name.endswith(RERANK))))

    def report(self, dataset, rows: pd.DataFrame, predictions: ReIDEmbeddings) -> dict[str, float]:
        return self.metrics(rows, predictions)

    def baseline(self, dataset, train: pd.DataFrame, valid: pd.DataFrame) -> ReIDEmbeddings:
        """Colour histograms of the RGB images: the nearest neighbour a learned embedding must beat."""
        return ReIDEmbeddings(colour_histogram_features(load_reid_pixels(dataset, valid)), np.zeros(len(valid)))

    def check_folds(self, dataset, folds: pd.DataFrame) -> None:
        """No identity in two folds, and every validation fold has queries with a cross-camera match."""
        fold_of = folds.set_index("id")["fold"]
        rows = dataset.train.assign(fold=fold_of.reindex(dataset.train[dataset.id_col].astype(str)).to_numpy())
        spread = rows.groupby("pid")["fold"].nunique()
        if (spread > 1).any():
            pid = spread.index[spread > 1][0]
            raise HarnessError(f"{dataset.name}: identity {pid} is in folds {sorted(rows.loc[rows.pid == pid, 'fold'].unique())}; "
                               "re-ID folds must group by identity (fold_scheme=group).")  # fmt: skip
        for fold, part in rows.groupby("fold"):
            if not split_query_gallery(part).any():
                raise HarnessError(f"{dataset.name}: validation fold {fold} has no query: none of its identities is "
                                   "seen by two cameras; use fewer folds.")  # fmt: skip

    def assemble(self, n_rows: int, parts: Sequence[tuple[np.ndarray, ReIDEmbeddings]]) -> ReIDEmbeddings:
        """Out-of-fold embeddings, each fold's rows in its own space (numbered by part)."""
        order = np.concatenate([index for index, _ in parts])
        if len(order) != n_rows or len(np.unique(order)) != n_rows:
            raise ValueError("fold parts must cover every training row exactly once")
        dims = {p.features.shape[1] for _, p in parts}
        if len(dims) != 1:
            raise HarnessError("The fold models' embeddings differ in size; a family must embed in one dimension.")
        features, space = np.zeros((n_rows, dims.pop()), np.float32), np.zeros(n_rows, np.int64)
        for number, (index, p) in enumerate(parts):
            features[index], space[index] = p.features, number
        return ReIDEmbeddings(features, space)

    def average(self, predictions: Sequence[ReIDEmbeddings]) -> ReIDEmbeddings:
        return concatenate(predictions)

    def take(self, predictions: ReIDEmbeddings, index: np.ndarray) -> ReIDEmbeddings:
        return predictions.take(index)

    def to_frame(self, ids: pd.Series, predictions: ReIDEmbeddings, name: str = "prediction") -> pd.DataFrame:
        return pd.DataFrame({"id": ids.to_numpy(), f"{name}_embedding": list(predictions.features),
                             f"{name}_space": predictions.space})  # fmt: skip

    def from_frame(self, frame: pd.DataFrame, name: str = "prediction") -> ReIDEmbeddings | None:
        if f"{name}_embedding" not in frame.columns:
            return None
        return ReIDEmbeddings(np.stack(frame[f"{name}_embedding"]), frame[f"{name}_space"].to_numpy(np.int64))

    def blend(self, method: str, oofs: Sequence[ReIDEmbeddings], tests: Sequence[ReIDEmbeddings], *, weights=None,
              **context) -> tuple[ReIDEmbeddings, ReIDEmbeddings, list[float] | None]:  # fmt: skip
        """``mean`` / ``weighted_mean``: distances averaged (embeddings concatenated, see :func:`concatenate`)."""
        if method not in ("mean", "weighted_mean"):
            raise HarnessError(f"Re-ID runs blend with mean or weighted_mean (averaged distances), not {method!r}.")
        if isinstance(weights, str):
            raise HarnessError("--weights optimize is for row-wise predictions; give re-ID runs explicit weights.")
        w = None if weights is None else [float(x) for x in normalise_weights(weights, len(oofs))]
        return concatenate(oofs, w), concatenate(tests, w), w

    def submission(self, dataset, ids: pd.Series, predictions: ReIDEmbeddings) -> pd.DataFrame:
        """``id, gallery``: each test query's :data:`SUBMISSION_K` nearest gallery image ids, nearest first.

        Every gallery image is listed, the query's own camera too: the evaluator applies the
        protocol's removals, as Market-1501's official code does.
        """
        is_query, is_gallery = roles(dataset.test)
        features = predictions.normalised()
        gallery_ids = ids.to_numpy()[is_gallery]
        gallery = torch.from_numpy(features[is_gallery])
        query_rows = np.flatnonzero(is_query)
        lists = []
        for start in range(0, len(query_rows), 1024):  # memory: 1024 x gallery distances at a time
            rows = query_rows[start : start + 1024]
            similarity = torch.from_numpy(features[rows]) @ gallery.T
            top = torch.topk(similarity, min(SUBMISSION_K, len(gallery_ids)), dim=1).indices.numpy()
            lists += [" ".join(gallery_ids[t]) for t in top]
        return pd.DataFrame({"id": ids.to_numpy()[query_rows], "gallery": lists})

    def submission_keys(self, dataset) -> pd.Series:
        """A submission's first column: the test query images' ids (the index: their test rows)."""
        return dataset.test[dataset.id_col].astype(str)[roles(dataset.test)[0]].rename("id")

    def read_submission(self, dataset, frame: pd.DataFrame, source: str) -> RankedLists:
        """The gallery lists of a file in the format of :meth:`submission`, in the order of
        :meth:`submission_keys`; a format violation is a one-line error naming ``source``, the row and column."""
        check_header(frame, ["id", "gallery"], source)
        rows = match_rows(frame, self.submission_keys(dataset), source, "query image", dataset.name)
        gallery = dataset.test[dataset.id_col].astype(str)[roles(dataset.test)[1]]
        lists = parse_lists(frame, "gallery", {name: i for i, name in enumerate(gallery)}, source,
                            f"a gallery image of {dataset.name}", SUBMISSION_K)  # fmt: skip
        return RankedLists.from_lists([lists[row] for row in rows], len(gallery))

    def check_submission_metric(self, dataset, metric) -> None:
        """A submission ranks the gallery: re-ranking needs the embeddings, which it does not hold."""
        if metric.name.endswith(RERANK):
            raise HarnessError(f"A {dataset.name} submission lists gallery images, not the embeddings that "
                               f"{metric.name} re-ranks: score it with "
                               f"{metric.name.removesuffix(RERANK)}.")  # fmt: skip


def _reranked_metrics(qf: np.ndarray, gf: np.ndarray, pids, cams, options: dict[str, Any]) -> dict[str, Any]:
    """The report's metrics on k-reciprocal re-ranked cosine distances."""
    distances = rerank_from_features(qf, gf, metric="cosine", **options)
    return _report(reid_from_distances(distances, pids[0], pids[1], cams[0], cams[1]))


def _report(result: dict[str, Any]) -> dict[str, Any]:
    """The report's metrics from :func:`harness.metrics.reid_from_distances`."""
    return {"map": result["map"], "minp": result["minp"], "n_queries": result["n_queries"],
            "n_skipped": result["n_skipped"], **{f"rank{k}": float(result["cmc"][k - 1]) for k in (1, 5, 10)}}  # fmt: skip


TASK = ReIDTask()


# ----------------------------------------------------------------------------
# Sampling: P identities x K images
# ----------------------------------------------------------------------------


class PKSampler(Sampler[list[int]]):
    """Batches of ``P = batch_size // k`` distinct identities with ``k`` images each (Hermans et al.,
    2017), which batch-hard triplet mining needs: every anchor has positives and negatives in its
    batch. Identities with fewer than ``k`` images are drawn with replacement.

    An epoch has a fixed number of batches, ``Σ_id max(1, n_id // k) // P`` (so every image is seen
    about once); each batch picks P identities among those with unused groups, weighted by how
    many they have left, and an identity whose groups are used up is refilled. Seeded: the same
    seed gives the same batches, epoch after epoch.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, k: int, seed: int):
        labels = np.asarray(labels)
        if k < 1 or batch_size % k:
            raise HarnessError(f"train.batch_size ({batch_size}) must be a multiple of model.instances_per_id ({k}).")
        self.k, self.p = k, batch_size // k
        ids, inverse = np.unique(labels, return_inverse=True)
        if len(ids) < self.p:
            raise HarnessError(f"A batch of {self.p} identities x {k} images needs at least {self.p} training "
                               f"identities; this fold has {len(ids)}: lower train.batch_size.")  # fmt: skip
        self.by_id = [np.flatnonzero(inverse == i) for i in range(len(ids))]
        self.n_batches = max(1, sum(max(1, len(rows) // k) for rows in self.by_id) // self.p)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n_batches

    def _groups(self, identity: int) -> list[np.ndarray]:
        rows = self.rng.permutation(self.by_id[identity])
        if len(rows) < self.k:
            rows = self.rng.choice(rows, self.k, replace=True)
        return [rows[i : i + self.k] for i in range(0, len(rows) - self.k + 1, self.k)]

    def __iter__(self) -> Iterator[list[int]]:
        pending = [self._groups(i) for i in range(len(self.by_id))]
        for _ in range(self.n_batches):
            left = np.array([len(groups) for groups in pending], dtype=float)
            if (left > 0).sum() < self.p:  # refill the used-up identities
                for i in np.flatnonzero(left == 0):
                    pending[i] = self._groups(i)
                left = np.array([len(groups) for groups in pending], dtype=float)
            chosen = self.rng.choice(len(pending), self.p, replace=False, p=left / left.sum())
            yield [int(row) for i in chosen for row in pending[i].pop()]


# ----------------------------------------------------------------------------
# The family base: images (one per modality) in, an embedding out
# ----------------------------------------------------------------------------


class ReIDFamily(Family):
    """A family that embeds person images; the core samples P x K batches, trains and embeds.

    Subclasses implement :meth:`build_network`, returning a module with ``embed(images, mask) ->
    [B, D]`` and ``training_step((images, mask, labels)) -> loss``, where ``images`` is float
    ``[B, M, 3, H, W]`` (one standardised image per modality of ``dataset.meta["modalities"]``,
    zeros where a row lacks that modality), ``mask`` bool ``[B, M]`` (which modalities the row has)
    and ``labels`` the training identities numbered ``0 .. n_ids - 1``. The same crop and flip is
    applied to every modality of a row (they show the same moment).
    """

    task = TaskType.REID
    augmentation: str = "crop_flip_erase"  # BoT's: pad-and-crop, horizontal flip, random erasing
    instances_per_id: int = 4  # K of the P x K batches
    predict_batch_size: int = 256

    @abc.abstractmethod
    def build_network(self, dataset, ctx: FitContext, n_ids: int) -> nn.Module:
        """The module to train for ``dataset`` (read ``meta["image_shape"]``, ``meta["modalities"]``)."""

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        check_augmentation(self.augmentation)
        torch.manual_seed(ctx.seed)
        self.device, self._dataset = torch.device(ctx.device), ctx.dataset
        self.modalities = tuple(ctx.dataset.meta["modalities"])
        pixels, mask = self._pixels(train)
        # Per modality, statistics of this fold's training images that exist.
        self.standardisers = [Standardiser(pixels[:, m][mask[:, m]]) for m in range(len(self.modalities))]
        _, labels = np.unique(train["pid"].to_numpy(), return_inverse=True)
        self.network = self.build_network(ctx.dataset, ctx, int(labels.max()) + 1)
        sampler = PKSampler(labels, ctx.train_config.batch_size, self.instances_per_id, ctx.seed)
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        valid_inputs = self._pixels(valid)
        self.train_result = trainer.fit(
            self.network, TensorDataset(pixels, mask, torch.as_tensor(labels)), collate_fn=self._training_batch,
            batch_sampler=sampler, evaluate=lambda module: TASK.score(ctx.metric, ctx.dataset, valid, self._embed(*valid_inputs)),
        )  # fmt: skip

    def predict(self, part: pd.DataFrame) -> ReIDEmbeddings:
        return self._embed(*self._pixels(part))

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.network.load_state_dict(state_dict)

    def _pixels(self, part: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[N, M, H, W, 3]`` and the modality mask ``[N, M]``."""
        stacked = np.stack([load_reid_pixels(self._dataset, part, m) for m in self.modalities], axis=1)
        return torch.from_numpy(stacked), torch.from_numpy(modality_mask(part, self.modalities))

    def _inputs(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Standardised float ``[B, M, 3, H, W]``, zeros for missing modalities."""
        images = torch.stack([s(pixels[:, m]) for m, s in enumerate(self.standardisers)], dim=1)
        return images * mask[:, :, None, None, None]

    def _training_batch(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels, mask, labels = (torch.stack(column) for column in zip(*rows))
        images = self._inputs(pixels, mask)
        b, m, c, h, w = images.shape
        images = augment(images.reshape(b, m * c, h, w), self.augmentation).reshape(b, m, c, h, w)
        return images, mask, labels

    @torch.no_grad()
    def _embed(self, pixels: torch.Tensor, mask: torch.Tensor) -> ReIDEmbeddings:
        self.network.eval()
        out = []
        for start in range(0, len(pixels), self.predict_batch_size):
            rows = slice(start, start + self.predict_batch_size)
            images = self._inputs(pixels[rows], mask[rows]).to(self.device)
            out.append(self.network.embed(images, mask[rows].to(self.device)).float().cpu())
        features = torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)
        return ReIDEmbeddings(features, np.zeros(len(features)))

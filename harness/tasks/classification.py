"""The ``classification`` task: class probabilities ``[C]`` per row; accuracy, top-5, log-loss, macro-F1.

Rows carry a ``label`` (class code in ``[0, C)``), ``dataset.meta["classes"]`` names the codes.
The submission is ``id, label`` with the class name; blends average probabilities.

Image families subclass :class:`ImageClassifier`: they build a network from pixels to logits, and
the core feeds it the fold's pixels (normalised with the fold's own training statistics, augmented
in training), trains it through the one loop and turns logits into probabilities, so every image
family is fed and evaluated the same way.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from harness.data.images import load_pixels
from harness.errors import HarnessError
from harness.metrics import accuracy, log_loss, macro_f1, top_k_accuracy
from harness.pixels import Standardiser, augment, check_augmentation
from harness.registry import Family, FitContext
from harness.submissions import cell_error
from harness.tasks import TaskType
from harness.tasks.rowwise import RowwiseTask
from harness.trainer import Trainer

__all__ = ["ClassificationTask", "TASK", "ImageClassifier"]


class ClassificationTask(RowwiseTask):
    def baseline(self, dataset, train, valid):
        """The class frequencies of the training rows, for every validation row."""
        labels = train[dataset.target_col].to_numpy()
        n_classes = int(dataset.meta.get("n_classes", labels.max() + 1))
        prior = np.bincount(labels, minlength=n_classes) / len(labels)
        return np.tile(prior, (len(valid), 1))

    def report(self, dataset, rows, predictions):
        """Accuracy, top-5 accuracy (above 5 classes), log-loss and macro-F1 of the probabilities."""
        y, proba = rows[dataset.target_col].to_numpy(), np.asarray(predictions, dtype=float)
        out = {"accuracy": accuracy(y, proba), "log_loss": log_loss(y, proba), "macro_f1": macro_f1(y, proba)}
        if proba.shape[1] > 5:
            out["top5_accuracy"] = top_k_accuracy(y, proba, 5)
        return out

    def submission(self, dataset, ids, predictions):
        """``id, label``: the most probable class's name (its code where the dataset names none)."""
        labels = np.asarray(predictions).argmax(axis=1)
        classes = dataset.meta.get("classes")
        if classes is not None:
            labels = np.asarray(classes)[labels]
        return pd.DataFrame({"id": ids.to_numpy(), dataset.target_col: labels})

    def _parse(self, dataset, frame, source):
        """One class name per row (a code where the dataset names none), as a probability of 1."""
        names = [str(name) for name in dataset.meta.get("classes", range(int(dataset.meta["n_classes"])))]
        codes = {name: code for code, name in enumerate(names)}
        text = frame[dataset.target_col]
        unknown = ~text.isin(codes).to_numpy()
        if unknown.any():
            row = int(np.argmax(unknown))
            listed = ", ".join(names[:10]) + (f", ... ({len(names)} classes)" if len(names) > 10 else "")
            problem = f"{text.iat[row]!r} is not a class of {dataset.name}; expected one of {listed}"
            raise cell_error(frame, source, row, dataset.target_col, problem)
        return np.eye(len(names))[text.map(codes).to_numpy(dtype=np.int64)]

    def check_submission_metric(self, dataset, metric):
        """A submission names one class per row: accuracy and macro-F1 score it, metrics of probabilities cannot."""
        if metric.name not in ("accuracy", "macro_f1"):
            raise HarnessError(f"A {dataset.name} submission names one class per row; {metric.name} needs class "
                               "probabilities: score it with accuracy or macro_f1.")  # fmt: skip


TASK = ClassificationTask()


# ----------------------------------------------------------------------------
# The family base: pixels in, class probabilities out
# ----------------------------------------------------------------------------


class ImageClassifier(Family):
    """A family that maps pixels to class logits; the core feeds, trains and predicts.

    Subclasses implement :meth:`build_network`, returning a module with ``forward(images) ->
    logits [B, C]`` for images float ``[B, C, H, W]`` (per-channel standardised) and
    ``training_step((images, labels)) -> loss``; ``epoch_logs()`` and ``param_groups()`` are
    optional, as for every module of :class:`harness.trainer.Trainer`. Prediction reads pixels
    only, never a row's label.
    """

    task = TaskType.CLASSIFICATION
    augmentation: str = "crop_flip"  # one of harness.pixels.AUGMENTATIONS, applied to training batches only
    predict_batch_size: int = 256

    @abc.abstractmethod
    def build_network(self, dataset, ctx: FitContext) -> nn.Module:
        """The module to train for ``dataset`` (read ``meta["image_shape"]``, ``n_classes``, ...)."""

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, ctx: FitContext) -> None:
        check_augmentation(self.augmentation)
        torch.manual_seed(ctx.seed)
        self.device, self._dataset = torch.device(ctx.device), ctx.dataset
        pixels = torch.from_numpy(np.ascontiguousarray(load_pixels(ctx.dataset, train)))
        self.images = Standardiser(pixels)  # this fold's training rows only
        self.network = self.build_network(ctx.dataset, ctx)
        labels = torch.tensor(train[ctx.dataset.target_col].to_numpy(), dtype=torch.long)
        valid_pixels = load_pixels(ctx.dataset, valid)
        trainer = Trainer(ctx.train_config, ctx.metric, ctx.device, ctx.seed, ctx.log_metrics, ctx.workdir,
                          desc=f"fold {ctx.fold}")  # fmt: skip
        self.train_result = trainer.fit(
            self.network, TensorDataset(pixels, labels), collate_fn=self._training_batch,
            evaluate=lambda module: TASK.score(ctx.metric, ctx.dataset, valid, self._probabilities(valid_pixels)),
        )  # fmt: skip

    def predict(self, part: pd.DataFrame) -> np.ndarray:
        """``[len(part), C]`` class probabilities from the rows' pixels."""
        self.network.eval()
        return self._probabilities(load_pixels(self._dataset, part))

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        self.network.load_state_dict(state_dict)

    def _training_batch(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = zip(*rows)
        return augment(self.images(torch.stack(pixels)), self.augmentation), torch.stack(labels)

    @torch.no_grad()
    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(pixels), self.predict_batch_size):
            logits = self.network(self.images(pixels[start : start + self.predict_batch_size]).to(self.device))
            out.append(torch.softmax(logits.double(), dim=1).cpu())  # float64: rows sum to 1 for log-loss
        return torch.cat(out).numpy()

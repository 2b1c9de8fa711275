"""The re-ID head both re-ID families share: BNNeck, label-smoothed identity loss, batch-hard triplet.

From the "bag of tricks" baseline (Luo et al., 2019): the triplet loss acts on the feature before
a BatchNorm (the *neck*, bias frozen), the identity classifier (no bias) on the feature after it,
and the after-BN feature is the embedding compared by cosine distance at test time. The triplet is
Hermans et al.'s batch-hard form, which needs P identities x K images per batch
(:class:`harness.tasks.reid.PKSampler`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReIDHead", "batch_hard_triplet_loss"]


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Mean over anchors of ``relu(d(a, hardest positive) - d(a, hardest negative) + margin)``.

    Euclidean distances between the rows of ``features`` ``[B, D]``; an anchor without a positive
    or a negative in the batch is left out (0 when no anchor has both).
    """
    distances = torch.cdist(features, features).clamp(min=1e-12)  # clamp: a finite gradient at d = 0
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).amin(1)
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()


class ReIDHead(nn.Module):
    """BNNeck and the two losses; :meth:`embed` gives the test-time embedding (the after-BN feature)."""

    def __init__(self, dim: int, n_ids: int, label_smoothing: float = 0.1, margin: float = 0.3,
                 triplet_weight: float = 1.0):  # fmt: skip
        super().__init__()
        self.neck = nn.BatchNorm1d(dim)
        self.neck.bias.requires_grad_(False)  # BoT: a frozen shift keeps the classifier's space centred
        self.classifier = nn.Linear(dim, n_ids, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.label_smoothing, self.margin, self.triplet_weight = label_smoothing, margin, triplet_weight

    def losses(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"id": cross-entropy, "triplet": batch-hard triplet x weight}`` of the pre-neck features."""
        logits = self.classifier(self.neck(features))
        return {"id": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing),
                "triplet": self.triplet_weight * batch_hard_triplet_loss(features, labels, self.margin)}  # fmt: skip

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.neck(features)

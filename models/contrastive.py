"""The contrastive image–text loss shared by the families that learn one space for both (Diff-MoE, dual encoders).

One home, so every family's "InfoNCE" in a report is the same quantity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce_loss"]


def info_nce_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                  pair_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Symmetric InfoNCE (CLIP) over a batch of L2-normalised embeddings ``[B, D]``.

    .. math:: L = \\tfrac12\\big(\\mathrm{CE}(s\\,I T^\\top, Y) + \\mathrm{CE}(s\\,T I^\\top, Y)\\big)

    with ``Y`` the identity (row i's text is image i's), or, with ``pair_ids [B]``, every pair
    sharing an id a positive with equal target mass (e.g. rows of one class paired with the same
    class description, or the captions of one image), so duplicates are not pushed apart.

    Args:
        image: image embeddings ``[B, D]``.
        text: text embeddings ``[B, D]``.
        scale: the logit scale ``s`` (1 / temperature).
        pair_ids: ids ``[B]``; rows with equal ids are positives of each other. Defaults to None.
    """
    logits = scale * image @ text.t()
    if pair_ids is None:
        target = torch.arange(len(image), device=image.device)
    else:
        same = (pair_ids[:, None] == pair_ids[None]).to(logits.dtype)
        target = same / same.sum(1, keepdim=True)  # symmetric, so it is also the text → image target
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

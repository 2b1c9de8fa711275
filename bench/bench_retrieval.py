"""Image-text retrieval metrics: the harness engine against a straightforward full-matrix reference.

Embeddings of ``--images`` images and five captions each (COCO's 5k test split has 25k captions),
correlated so that retrieval is neither trivial nor random. The reference computes both full
cosine-similarity matrices at once, sorts every row and reads each query's first match (what a
short evaluation script does); the harness (:func:`harness.metrics.retrieval_metrics`) holds
``batch_size`` query rows at a time and counts instead of sorting. Prints seconds, peak extra
memory of the matrices each holds, the ratio, and the largest difference of Recall@1/5/10.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from harness.metrics import RETRIEVAL_KS, retrieval_metrics


def reference(image: np.ndarray, text: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    """Recall@K both ways from fully sorted similarity rows (ties: whatever argsort does)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = torch.from_numpy(unit(image) @ unit(text).T)
    order = torch.argsort(sim, dim=1, descending=True).numpy()  # [N, T]
    hit = owner[order] == np.arange(len(image))[:, None]
    i2t_first = hit.argmax(axis=1)  # position of the image's best-placed caption
    order = torch.argsort(sim.T, dim=1, descending=True).numpy()  # [T, N]
    t2i_first = (order == owner[:, None]).argmax(axis=1)
    out = {f"i2t_r@{k}": float(np.mean(i2t_first < k)) for k in RETRIEVAL_KS}
    out.update({f"t2i_r@{k}": float(np.mean(t2i_first < k)) for k in RETRIEVAL_KS})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--noise", type=float, default=8.0, help="caption noise around its image's embedding")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((args.images, args.dim), dtype=np.float32)
    owner = np.repeat(np.arange(args.images), 5)
    text = image[owner] + args.noise * rng.standard_normal((len(owner), args.dim), dtype=np.float32)
    print(f"{args.images} images x {len(owner)} captions, dim {args.dim}, {torch.get_num_threads()} threads")

    started = time.perf_counter()
    ours = retrieval_metrics(image, text, owner)
    harness_seconds = time.perf_counter() - started
    started = time.perf_counter()
    theirs = reference(image, text, owner)
    reference_seconds = time.perf_counter() - started

    full = args.images * len(owner)
    print(f"{'':<28}{'seconds':>9}{'matrix memory':>16}")
    print(f"{'harness (batched, counted)':<28}{harness_seconds:>9.2f}{f'{512 * len(owner) * 4 / 2**20:.0f} MiB':>16}")
    print(f"{'reference (full sort)':<28}{reference_seconds:>9.2f}{f'{full * 12 / 2**20:.0f} MiB':>16}")
    print(f"reference / harness: {reference_seconds / harness_seconds:.1f}x")
    print("Recall@K  " + "  ".join(f"{k} {ours[k]:.4f}" for k in theirs))
    print(f"largest difference from the reference: {max(abs(ours[k] - theirs[k]) for k in theirs):.2e} "
          "(tie-free random embeddings: should be 0)")  # fmt: skip


if __name__ == "__main__":
    main()

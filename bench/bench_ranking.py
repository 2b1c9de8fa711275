"""Full-ranking metrics against the memory floor and against peers, on one users × items score matrix.

Every number is measured in the same run on the same float32 scores (tie-free: standard normal)
and histories, and printed in seconds and as a ratio to the floor:

- ``floor``: one read of the score matrix (``scores.sum()``), what any metric must at least pay;
- ``harness ranks``: :func:`harness.tasks.recommendation.full_ranking` with targets and no lists (what a
  ``_full`` validation score computes): the NaN check, one counting pass per batch, the
  history correction, then Hit/NDCG/MRR@K from the ranks;
- ``harness + top-N``: the same pass also producing each user's top-N list (the submission path);
- ``torch.topk``: the whole matrix masked and ``torch.topk`` over it, the target's position in the
  list (RecBole's full-sort evaluation); it holds a second copy of the matrix;
- ``ranx``: ``ranx.evaluate`` on the top-K lists of the ``torch.topk`` row (list building not
  counted), when ranx is installed (only in the bench environment: ``bench/requirements-peers.txt``).

The harness values are checked against the ``torch.topk`` reference (equal on tie-free scores) and
against ranx. ``--users``/``--items`` shrink the problem; the defaults are the 20,000 × 20,000 case.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from harness.metrics import ranking_report, ranks_from_topn
from harness.tasks.recommendation import MAX_SCORE_ELEMENTS, full_ranking

KS = (5, 10, 20)


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def report(ranks: np.ndarray) -> dict[str, float]:
    return {k: v for k, v in ranking_report(ranks, KS).items() if not k.startswith("recall")}


def topk_reference(scores: torch.Tensor, histories, targets: np.ndarray, k: int):
    masked = scores.clone()
    masked[:, 0] = -torch.inf
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    masked[torch.as_tensor(rows), torch.as_tensor(np.concatenate(histories))] = -torch.inf
    top = torch.topk(masked, k, dim=1).indices.numpy()
    return top, report(ranks_from_topn(top, targets))


def ranx_scores(top: np.ndarray, values: np.ndarray, targets: np.ndarray):
    from ranx import Qrels, Run, evaluate

    users = [f"u{i}" for i in range(len(top))]
    qrels = Qrels({u: {f"i{t}": 1} for u, t in zip(users, targets)})
    run = Run({u: {f"i{i}": float(v) for i, v in zip(row, vals)} for u, row, vals in zip(users, top, values)})
    names = [f"{m}@{k}" for k in KS for m in ("hit_rate", "ndcg", "mrr")]
    started = time.perf_counter()
    result = evaluate(qrels, run, names)
    seconds = time.perf_counter() - started
    rename = {"hit_rate": "hit", "ndcg": "ndcg", "mrr": "mrr"}
    return seconds, {f"{rename[n.split('@')[0]]}@{n.split('@')[1]}_full": float(v) for n, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=50, help="mean history length")
    parser.add_argument("--top", type=int, default=50, help="list length of the submission path")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scores = torch.randn(args.users, args.items)
    lengths = np.clip(rng.geometric(1 / args.history, size=args.users), 1, args.items // 2)
    histories = [rng.choice(np.arange(1, args.items), size=n, replace=False) for n in lengths]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, args.items), h)) for h in histories])
    score_fn = lambda rows: scores[rows[0] : rows[-1] + 1]  # noqa: E731  (batches are contiguous rows)
    batch_bytes = min(args.users, MAX_SCORE_ELEMENTS // args.items) * args.items * 4

    floor, _ = timed(lambda: float(scores.sum()), args.repeats)
    harness, harness_values = timed(
        lambda: report(full_ranking(score_fn, histories, args.items, targets=targets, n=0).ranks), args.repeats
    )
    with_lists, _ = timed(lambda: full_ranking(score_fn, histories, args.items, targets=targets, n=args.top), 1)
    topk_seconds, (top, topk_values) = timed(lambda: topk_reference(scores, histories, targets, max(KS)), 1)

    rows = [
        ("floor: one read (sum)", floor, "0"),
        ("harness ranks + metrics", harness, f"{batch_bytes / 2**20:.0f} MiB per batch"),
        (f"harness + top-{args.top} lists", with_lists, f"{batch_bytes / 2**20:.0f} MiB per batch"),
        ("torch.topk, whole matrix", topk_seconds, f"{scores.numel() * 4 / 2**20:,.0f} MiB"),
    ]
    peers = {"torch.topk": topk_values}
    try:
        values = torch.gather(scores, 1, torch.as_tensor(top)).numpy()
        ranx_seconds, peers["ranx"] = ranx_scores(top, values, targets)
        rows.append((f"ranx.evaluate on top-{max(KS)} lists", ranx_seconds, "lists"))
    except ImportError:
        print("ranx is not installed here (bench environment only: pip install -r bench/requirements-peers.txt)")

    print(f"{args.users:,} users × {args.items:,} items, float32, mean history {lengths.mean():.0f}, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"{'path':<32}{'seconds':>10}{'× floor':>10}   extra memory")
    for name, seconds, memory in rows:
        print(f"{name:<32}{seconds:>10.3f}{seconds / floor:>10.1f}   {memory}")
    for peer, values in peers.items():
        gap = max(abs(harness_values[key] - values[key]) for key in harness_values)
        print(f"harness vs {peer}: largest metric difference {gap:.2e} over {', '.join(harness_values)}")
    print("harness values: " + ", ".join(f"{k} {v:.4f}" for k, v in harness_values.items()))


if __name__ == "__main__":
    main()

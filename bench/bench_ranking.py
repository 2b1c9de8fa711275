"""Full-ranking throughput: users × items scoring, history masking and top-K, against simple peers.

The harness path (:func:`harness.ranking.top_n`) scores users in memory-bounded batches, masks
their histories with one scatter per batch and takes ``torch.topk`` on the device. Two
straightforward peers are measured in the same run on the same embeddings and histories:

- ``per-user loop``: for each user, a score vector, its history set to -inf, ``np.argsort``;
- ``full matrix``: the whole users × items score matrix at once, masked row by row, then one
  ``np.argpartition`` + sort (fast, but holds every score in memory at once).

The table prints users per second, the speed-up of the harness over each peer, the scores each
path holds at once, and how many top-K items agree with the per-user loop's (float32 matmuls in
torch and numpy round differently, so near-ties at the K-th place may swap).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from harness.ranking import MAX_SCORE_ELEMENTS, top_n
from harness.runtime import resolve_device


def per_user_loop(users: np.ndarray, items: np.ndarray, histories, k: int) -> np.ndarray:
    out = np.empty((len(users), k), np.int64)
    for row, history in enumerate(histories):
        scores = items @ users[row]
        scores[0] = -np.inf
        scores[history] = -np.inf
        out[row] = np.argsort(-scores, kind="stable")[:k]
    return out


def full_matrix(users: np.ndarray, items: np.ndarray, histories, k: int) -> np.ndarray:
    scores = users @ items.T
    scores[:, 0] = -np.inf
    for row, history in enumerate(histories):
        scores[row, history] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def timed(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6040, help="default: ml-1m's users")
    parser.add_argument("--items", type=int, default=3706, help="default: ml-1m's items")
    parser.add_argument("--history", type=int, default=165, help="mean history length (ml-1m: about 165)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(resolve_device(args.device))

    rng = np.random.default_rng(0)
    users = rng.standard_normal((args.users, args.dim)).astype(np.float32)
    items = rng.standard_normal((args.items + 1, args.dim)).astype(np.float32)
    lengths = np.clip(rng.geometric(1 / args.history, size=args.users), 1, args.items // 2)
    histories = [rng.choice(np.arange(1, args.items + 1), size=n, replace=False) for n in lengths]
    users_t, items_t = torch.from_numpy(users).to(device), torch.from_numpy(items).to(device)

    def harness_path():
        return top_n(lambda rows: users_t[torch.as_tensor(rows, device=device)] @ items_t.T, histories,
                     args.items + 1, args.k, device=device)[0]  # fmt: skip

    results = {
        "harness top_n": (*timed(harness_path, args.repeats), min(args.users, MAX_SCORE_ELEMENTS // (args.items + 1))),
        "per-user loop": (*timed(lambda: per_user_loop(users, items, histories, args.k), 1), 1),
        "full matrix": (*timed(lambda: full_matrix(users, items, histories, args.k), args.repeats), args.users),
    }
    reference = results["per-user loop"][1]
    print(f"{args.users} users × {args.items} items, d={args.dim}, top-{args.k}, mean history {lengths.mean():.0f}, "
          f"device {device}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'path':<16}{'seconds':>10}{'users/s':>12}{'harness speed-up':>18}{'scores held':>14}{'agreement':>11}")
    harness_seconds = results["harness top_n"][0]
    for name, (seconds, top, rows_held) in results.items():
        agreement = np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(top, reference)])
        print(f"{name:<16}{seconds:>10.3f}{args.users / seconds:>12.0f}{seconds / harness_seconds:>17.1f}x"
              f"{rows_held * (args.items + 1):>14,}{agreement:>11.4%}")  # fmt: skip


if __name__ == "__main__":
    main()

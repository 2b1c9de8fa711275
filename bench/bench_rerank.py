"""k-reciprocal re-ranking (Zhong et al., CVPR 2017): the harness against torchreid's ``re_ranking``.

A seeded case the size of Market-1501's test split, scaled (default 2,000 queries x 10,000 gallery
images, features of dimension 512; Market-1501 has 3,368 x 15,913): about ``--per-id`` gallery
images per identity over ``--cams`` cameras, 10% of the gallery distractors (pid 0, each its own
random point), each query a random identity and camera. A feature is its identity's centre plus
its camera's offset plus noise (``--noise``), so that plain distances give a middling mAP which
re-ranking improves. The three squared-Euclidean float32 matrices (torchreid's
``compute_distance_matrix`` formula) are computed once and given to both:

- ``harness``: :func:`harness.reranking.k_reciprocal_rerank` (sparse ``V``, no row sorted);
- ``torchreid``: ``torchreid.utils.re_ranking`` (0.2.5; dense ``N x N`` arrays, Python loops over rows),
  when torchreid is importable -- run the bench with ``.venv-bench/bin/python``; without it the
  bench says so and times the harness alone.

Prints the seconds of each and their ratio, the largest absolute difference of the two outputs
and how many entries differ at all, and mAP / Rank-1 / mINP
(:func:`harness.metrics.reid_from_distances`) before re-ranking and after each, which must be
equal. ``--memory`` adds a traced pass of each (``tracemalloc``, which sees numpy's allocations:
the peak above what was allocated before the call), slower than the timed one.

    python bench/bench_rerank.py                                  # the harness alone
    .venv-bench/bin/python bench/bench_rerank.py                  # with torchreid (~2.7 GB more)
    .venv-bench/bin/python bench/bench_rerank.py --queries 500 --gallery 2500 --memory
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import warnings

import numpy as np
import torch

import torchreid_peer  # bench/torchreid_peer.py (benches run as scripts: bench/ is on the path)
from harness.metrics import reid_from_distances
from harness.reranking import k_reciprocal_rerank


def make_case(n_q: int, n_g: int, dim: int, per_id: int, n_cams: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    n_distractors = n_g // 10
    n_ids = max(1, (n_g - n_distractors) // per_id)
    centres = rng.standard_normal((n_ids + 1, dim), dtype=np.float32)
    offsets = 0.5 * rng.standard_normal((n_cams, dim), dtype=np.float32)
    g_ids = np.concatenate([rng.integers(1, n_ids + 1, size=n_g - n_distractors), np.zeros(n_distractors, np.int64)])
    g_ids = g_ids[rng.permutation(n_g)]
    q_ids = rng.integers(1, n_ids + 1, size=n_q)
    g_cams, q_cams = rng.integers(0, n_cams, size=n_g), rng.integers(0, n_cams, size=n_q)

    def features(ids: np.ndarray, cams: np.ndarray) -> np.ndarray:
        x = centres[ids]
        x[ids == 0] = rng.standard_normal((int((ids == 0).sum()), dim), dtype=np.float32)
        return x + offsets[cams] + noise * rng.standard_normal((len(ids), dim), dtype=np.float32)

    return features(q_ids, q_cams), q_ids, q_cams, features(g_ids, g_cams), g_ids, g_cams


def squared_euclidean(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """torchreid's ``euclidean_squared_distance``: ``|a|^2 + |b|^2 - 2 a b^T``, not clamped."""
    d = (a * a).sum(dim=1, keepdim=True) + (b * b).sum(dim=1)[None, :]
    return d.addmm_(a, b.T, beta=1, alpha=-2).numpy()


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def traced_peak(fn) -> float:
    """Peak bytes allocated by ``fn`` above what was allocated when it started (tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--gallery", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-id", type=int, default=12, help="gallery images per identity")
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--noise", type=float, default=2.2, help="feature noise around the identity's centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--memory", action="store_true", help="also trace each call's peak memory (slower)")
    parser.add_argument("--no-torchreid", action="store_true")
    args = parser.parse_args()
    n_q, n_g = args.queries, args.gallery
    options = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value}

    qf, q_ids, q_cams, gf, g_ids, g_cams = make_case(n_q, n_g, args.dim, args.per_id, args.cams, args.noise,
                                                     args.seed)  # fmt: skip
    seconds, (q_g, q_q, g_g) = timed(lambda: [squared_euclidean(torch.from_numpy(a), torch.from_numpy(b))
                                              for a, b in ((qf, gf), (qf, qf), (gf, gf))])  # fmt: skip
    n = n_q + n_g
    print(f"{n_q} queries x {n_g} gallery, dim {args.dim}, {len(np.unique(g_ids)) - 1} identities + "
          f"{int((g_ids == 0).sum())} distractors, {args.cams} cameras; k1={args.k1} k2={args.k2} "
          f"lambda={args.lambda_value}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs; the three distance matrices ({n * n * 4 / 2**30:.2f} GiB float32) in "
          f"{seconds:.1f} s")

    def evaluate(d: np.ndarray) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # queries without a match in another camera
            return reid_from_distances(d, q_ids, g_ids, q_cams, g_cams)

    def report(name: str, res: dict) -> str:
        return f"{name}: mAP {res['map']:.6f} Rank-1 {res['cmc'][0]:.6f} mINP {res['minp']:.6f}"

    before = evaluate(q_g)
    print(report("before re-ranking", before) + f" ({before['n_queries']} queries evaluated)")
    t_ours, ours = timed(lambda: k_reciprocal_rerank(q_g, q_q, g_g, **options))
    mine = evaluate(ours)
    memory = f", peak {traced_peak(lambda: k_reciprocal_rerank(q_g, q_q, g_g, **options)) / 2**20:.0f} MiB" \
        if args.memory else ""  # fmt: skip
    print(f"harness k_reciprocal_rerank   {t_ours:8.2f} s{memory}   " + report("after", mine))

    if args.no_torchreid:
        print("torchreid: skipped (--no-torchreid)")
        return
    re_ranking, how = torchreid_peer.load("utils.rerank", "re_ranking")
    if re_ranking is None:
        print(f"torchreid: not importable ({how}); run with .venv-bench/bin/python to time it too")
        return
    t_ref, ref = timed(lambda: re_ranking(q_g, q_q, g_g, **options))
    theirs = evaluate(ref)
    memory = f", peak {traced_peak(lambda: re_ranking(q_g, q_q, g_g, **options)) / 2**20:.0f} MiB" \
        if args.memory else ""  # fmt: skip
    print(f"torchreid re_ranking          {t_ref:8.2f} s{memory}   " + report("after", theirs))
    print(f"torchreid imported from {how}")
    diff = float(np.abs(ref.astype(np.float64) - ours).max())
    unequal = int(np.count_nonzero(ref != ours))
    same = (mine["map"], mine["cmc"][0], mine["minp"]) == (theirs["map"], theirs["cmc"][0], theirs["minp"])
    print(f"outputs: max |harness - torchreid| = {diff:.3g}, {unequal} of {ref.size} entries not bit-equal; "
          f"mAP / Rank-1 / mINP after re-ranking {'EQUAL' if same else 'DIFFERENT'}")
    print(f"harness speed-up: {t_ref / t_ours:.1f}x (torchreid {t_ref:.2f} s / harness {t_ours:.2f} s)")


if __name__ == "__main__":
    main()

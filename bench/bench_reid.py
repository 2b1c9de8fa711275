"""Re-ID evaluation of a query x gallery distance matrix: the harness engine against the floor and two peers.

All paths evaluate the same seeded float32 distance matrix (default 20k queries x 20k gallery,
Market-1501 protocol: same-id same-camera gallery entries removed per query):

- ``floor``: one read of the matrix (``torch.sum`` and ``numpy.sum``, the faster one, best of
  ``--repeats``) -- no evaluation can be faster than reading its input once;
- ``harness``: :func:`harness.metrics.reid_from_distances` (pessimistic ties, no row sorted: match
  distances gathered and sorted, every gallery entry compared with them), best of ``--repeats``;
- ``stable sort``: the engine the harness had before (a stable sort of every distance row, then
  cumulative sums over the sorted rows), run on the first ``--sort-queries`` queries against the
  whole gallery and extrapolated linearly to all queries (its cost is per query);
- ``torchreid``: ``torchreid.metrics.evaluate_rank(..., use_cython=False)`` (python path: an
  ``np.argsort`` of every row, then a Python loop over queries and over each query's sorted
  row), when torchreid is importable -- run the bench with ``.venv-bench/bin/python``. It takes
  ~1 ms per query per 1k gallery entries, so it runs on the first ``--torchreid-queries``
  queries, extrapolated the same way. It reports CMC and mAP, not mINP.

Agreement is checked on those query subsets: the harness evaluated on the same rows must match
the stable-sort engine (CMC, mAP, mINP) and torchreid (CMC and mAP) to 1e-6. The matrix has no
ties within a row (distance = integer score x n_gallery + a per-gallery-entry offset, exact in
float32), so every tie convention gives the same numbers. Identities: ~``--per-id`` gallery images each over
``--cams`` cameras, 10% of the gallery distractors (an id no query has); each query has a random
identity and camera; matches score nearer than non-matches on average, with overlap.

    python bench/bench_reid.py                    # 20k x 20k (needs ~2 GB for the matrix)
    .venv-bench/bin/python bench/bench_reid.py    # the same, with torchreid
    python bench/bench_reid.py --n 4000           # smaller
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

import torchreid_peer  # bench/torchreid_peer.py (benches run as scripts: bench/ is on the path)
from harness.metrics import reid_from_distances


def make_case(n_q: int, n_g: int, per_id: int, n_cams: int, seed: int):
    rng = np.random.default_rng(seed)
    n_distractors = n_g // 10
    n_ids = max(1, (n_g - n_distractors) // per_id)
    g_ids = np.concatenate([rng.integers(0, n_ids, size=n_g - n_distractors), np.full(n_distractors, -1)])
    g_ids = g_ids[rng.permutation(n_g)]
    g_cams = rng.integers(0, n_cams, size=n_g)
    q_ids = rng.integers(0, n_ids, size=n_q)
    q_cams = rng.integers(0, n_cams, size=n_q)
    levels = (1 << 24) // n_g  # score levels: level * n_g + offset < 2**24 is exact in float32
    offset = rng.permutation(n_g).astype(np.float32)  # distinct per gallery entry -> no ties in a row
    d = np.empty((n_q, n_g), dtype=np.float32)
    for s in range(0, n_q, 1024):
        rows = slice(s, s + 1024)
        match = g_ids[None, :] == q_ids[rows, None]
        z = rng.standard_normal((match.shape[0], n_g), dtype=np.float32)
        level = np.where(match, 0.35 + 0.12 * z, 0.65 + 0.09 * z)
        level = np.clip(np.floor(level * levels), 0, levels - 1)
        d[rows] = level * n_g + offset
    return d, q_ids, g_ids, q_cams, g_cams


def best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def stable_sort_engine(distmat, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50, batch: int = 512):
    """The harness's previous engine: stable sort of each row, cumsums over the sorted rows."""
    d = torch.from_numpy(distmat)
    qp, gp = torch.from_numpy(q_pids), torch.from_numpy(g_pids)
    qc, gc = torch.from_numpy(q_cams), torch.from_numpy(g_cams)
    first_hits, aps, inps, n_valid = np.zeros(max_rank, np.int64), [], [], 0
    for s in range(0, d.shape[0], batch):
        order = torch.sort(d[s : s + batch], dim=1, stable=True).indices
        match = gp[order] == qp[s : s + batch, None]
        keep = ~(match & (gc[order] == qc[s : s + batch, None]))
        good = match & keep
        n_good = good.sum(dim=1)
        valid = n_good > 0
        pos = keep.cumsum(dim=1) - 1
        precision = good.cumsum(dim=1).double() / (pos + 1).clamp(min=1).double()
        ap = (precision * good).sum(dim=1) / n_good.clamp(min=1)
        first = torch.where(good, pos, torch.full_like(pos, max_rank)).min(dim=1).values
        last = torch.where(good, pos, torch.full_like(pos, -1)).max(dim=1).values
        first_hits += np.bincount(first[valid].clamp(max=max_rank).numpy(), minlength=max_rank + 1)[:max_rank]
        aps.append(ap[valid].numpy())
        inps.append((n_good.double() / (last + 1).double())[valid].numpy())
        n_valid += int(valid.sum())
    return {"cmc": np.cumsum(first_hits) / n_valid, "map": float(np.concatenate(aps).mean()),
            "minp": float(np.concatenate(inps).mean()), "n_queries": n_valid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="queries and gallery entries (default 20000)")
    parser.add_argument("--n-gallery", type=int, default=None, help="gallery entries (default: --n)")
    parser.add_argument("--per-id", type=int, default=10, help="gallery images per identity")
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sort-queries", type=int, default=2000, help="queries the stable-sort engine runs on")
    parser.add_argument("--torchreid-queries", type=int, default=500, help="queries torchreid runs on")
    parser.add_argument("--no-torchreid", action="store_true")
    args = parser.parse_args()
    n_q, n_g = args.n, args.n_gallery or args.n

    started = time.perf_counter()
    d, q_ids, g_ids, q_cams, g_cams = make_case(n_q, n_g, args.per_id, args.cams, args.seed)
    n_good = ((g_ids[None, :] == q_ids[:, None]) & (g_cams[None, :] != q_cams[:, None])).sum(axis=1)
    print(f"{n_q} queries x {n_g} gallery float32 ({d.nbytes / 2**30:.2f} GiB), {len(np.unique(g_ids)) - 1} ids "
          f"+ distractors, {args.cams} cameras; matches per query (other camera): mean {n_good.mean():.1f}, "
          f"max {n_good.max()}, {int((n_good == 0).sum())} queries without one; "
          f"built in {time.perf_counter() - started:.0f} s")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs")
    dt = torch.from_numpy(d)
    floor_t, _ = best_of(lambda: dt.sum(), args.repeats)
    floor_n, _ = best_of(lambda: d.sum(), args.repeats)
    floor = min(floor_t, floor_n)

    def line(name: str, seconds: float, note: str = "") -> None:
        print(f"{name:<34} {seconds:9.3f} s  {seconds / floor:9.1f} x floor  {note}")

    print(f"{'path':<34} {'time':>11}  {'vs floor':>16}")
    line("floor: one read (torch.sum)", floor_t)
    line("floor: one read (numpy.sum)", floor_n)

    def harness():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "queries skipped" warning
            return reid_from_distances(d, q_ids, g_ids, q_cams, g_cams, max_rank=50)

    t_h, res = best_of(harness, args.repeats)
    line("harness reid_from_distances", t_h,
         f"mAP {res['map']:.6f} R1 {res['cmc'][0]:.6f} mINP {res['minp']:.6f} ({res['n_queries']} evaluated)")

    def harness_on(k: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reid_from_distances(d[:k], q_ids[:k], g_ids, q_cams[:k], g_cams, max_rank=50)

    def diff(a, b, keys=("map", "minp")) -> float:
        worst = float(np.abs(np.asarray(a["cmc"], np.float64) - b["cmc"]).max())
        return max([worst] + [abs(a[key] - b[key]) for key in keys])

    k = min(args.sort_queries, n_q)
    t_s, old = best_of(lambda: stable_sort_engine(d[:k], q_ids[:k], g_ids, q_cams[:k], g_cams), 1)
    diff_old = diff(old, harness_on(k))
    t_sort = t_s * n_q / k
    line("stable sort (previous engine)", t_sort,
         f"extrapolated from {k} queries ({t_s:.2f} s); max |diff| vs harness on them {diff_old:.1e}")

    if args.no_torchreid:
        print("torchreid: skipped (--no-torchreid)")
        return
    evaluate_rank, how = torchreid_peer.load("metrics.rank", "evaluate_rank")
    if evaluate_rank is None:
        print(f"torchreid: not importable ({how}); run with .venv-bench/bin/python")
        return
    k = min(args.torchreid_queries, n_q)
    t_r, (cmc, mean_ap) = best_of(lambda: evaluate_rank(d[:k], q_ids[:k], g_ids, q_cams[:k], g_cams, max_rank=50,
                                                        use_cython=False), 1)
    mine = harness_on(k)
    diff_ref = diff({"cmc": cmc, "map": mean_ap}, mine, keys=("map",))
    line("torchreid evaluate_rank (python)", t_r * n_q / k,
         f"extrapolated from {k} queries ({t_r:.2f} s); mAP {mean_ap:.6f} R1 {cmc[0]:.6f} on them")
    print(f"torchreid imported from {how}")
    agree = diff_old <= 1e-6 and diff_ref <= 1e-6
    print(f"agreement on the query subsets: harness vs stable sort {diff_old:.1e} (CMC, mAP, mINP), "
          f"harness vs torchreid {diff_ref:.1e} (CMC, mAP; harness mAP {mine['map']:.6f}) -> "
          f"{'AGREE' if agree else 'DISAGREE'} (tolerance 1e-6)")
    print(f"harness speed-up: {t_sort / t_h:.0f}x over the stable sort, "
          f"{t_r * n_q / k / t_h:.0f}x over torchreid (extrapolated)")


if __name__ == "__main__":
    main()

"""The query x gallery engine (re-ID and retrieval) against brute-force references written here.

The reference orders each query's gallery explicitly -- by distance, and among equal distances
non-matches before matches (ties count against the target) -- then reads the positions of the
matches. A second, plain ``np.argsort`` Market-1501 loop checks tie-free inputs.
"""

import warnings

import numpy as np
import pytest
import torch

from harness import metrics as M


def _brute(distmat, q_ids, g_ids, q_cams, g_cams, max_rank):
    """Per query: drop same-id same-camera entries, sort by (distance, is_match), read match positions."""
    cmc, ap, inp, skipped = [], [], [], 0
    for q in range(distmat.shape[0]):
        match = g_ids == q_ids[q]
        keep = ~(match & (g_cams == q_cams[q])) if q_cams is not None else np.ones_like(match)
        dist, hit = distmat[q][keep], match[keep]
        if not hit.any():
            skipped += 1
            continue
        order = np.lexsort((hit, dist))  # primary: distance; then False (non-match) before True
        pos = np.flatnonzero(hit[order])  # 0-based positions of the matches, ascending
        cmc.append(pos[0] < np.arange(1, max_rank + 1))
        ap.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1.0)))
        inp.append(len(pos) / (pos[-1] + 1.0))
    return {"cmc": np.mean(cmc, axis=0), "map": np.mean(ap), "minp": np.mean(inp),
            "n_queries": len(ap), "n_skipped": skipped}


def _argsort_market1501(distmat, q_ids, g_ids, q_cams, g_cams, max_rank):
    """The usual Market-1501 loop (argsort of each row, filter, cumsum); exact only without ties."""
    indices = np.argsort(distmat, axis=1)
    matches = g_ids[indices] == q_ids[:, None]
    cmc, ap, inp = [], [], []
    for q in range(distmat.shape[0]):
        keep = ~(matches[q] & (g_cams[indices[q]] == q_cams[q]))
        raw = matches[q][keep].astype(np.float64)
        if not raw.any():
            continue
        c = raw.cumsum()
        inp.append(c[np.flatnonzero(raw)[-1]] / (np.flatnonzero(raw)[-1] + 1.0))
        cmc.append(np.concatenate([np.minimum(c, 1), np.ones(max(0, max_rank - len(c)))])[:max_rank])
        ap.append((c / np.arange(1, len(c) + 1) * raw).sum() / raw.sum())
    return np.mean(cmc, axis=0), np.mean(ap), np.mean(inp)


def _assert_same(res, ref):
    np.testing.assert_allclose(res["cmc"], ref["cmc"], rtol=0, atol=1e-12)
    assert res["map"] == pytest.approx(ref["map"], rel=1e-12)
    assert res["minp"] == pytest.approx(ref["minp"], rel=1e-12)
    assert (res["n_queries"], res["n_skipped"]) == (ref["n_queries"], ref["n_skipped"])


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _layout(kind, rng, n_q, n_g, n_ids):
    """Ids with distractors (gallery ids no query has) and a camera layout."""
    q_ids = rng.integers(0, n_ids, size=n_q)
    g_ids = rng.integers(0, n_ids + 4, size=n_g)  # ids >= n_ids: distractors
    g_ids[: n_g // 6] = -1  # a big distractor id as well
    if kind == "random":
        q_cams, g_cams = rng.integers(0, 3, size=n_q), rng.integers(0, 3, size=n_g)
    elif kind == "one_camera_per_id":  # queries of an id share its gallery camera: many skipped
        q_cams, g_cams = q_ids % 2, np.where(rng.random(n_g) < 0.7, g_ids % 2, 1 - g_ids % 2)
    elif kind == "single_camera":  # everything from one camera but a few gallery entries
        q_cams, g_cams = np.zeros(n_q, np.int64), (rng.random(n_g) < 0.2).astype(np.int64)
    else:  # "none": retrieval, no camera filter
        q_cams = g_cams = None
    return q_ids, g_ids, q_cams, g_cams


@pytest.mark.parametrize("kernel", ["compare", "search"])
@pytest.mark.parametrize("layout", ["random", "one_camera_per_id", "single_camera", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_with_many_ties(seed, layout, kernel, monkeypatch):
    if kernel == "search":
        monkeypatch.setattr(M, "_QG_COMPARE_MAX", 0)  # every batch through searchsorted + histogram
    rng = np.random.default_rng(seed)
    q_ids, g_ids, q_cams, g_cams = _layout(layout, rng, 41, 150, 9)
    distmat = rng.integers(0, 6, size=(41, 150)).astype(np.float64)  # integer distances: many ties
    ref = _brute(distmat, q_ids, g_ids, q_cams, g_cams, 20)
    res = _quiet(M.query_gallery_metrics, distmat, q_ids, g_ids, q_cams, g_cams, max_rank=20)
    _assert_same(res, ref)
    scores = torch.from_numpy(-distmat).float()  # the same order as scores, highest first
    _assert_same(_quiet(M.query_gallery_metrics, scores, q_ids, g_ids, q_cams, g_cams, max_rank=20,
                        similarity=True), ref)
    if q_cams is not None:
        _assert_same(_quiet(M.reid_from_distances, distmat, q_ids, g_ids, q_cams, g_cams, max_rank=20), ref)


def test_small_budget_many_batches_and_both_kernels_agree(monkeypatch):
    rng = np.random.default_rng(3)
    q_ids, g_ids, q_cams, g_cams = _layout("random", rng, 60, 200, 5)  # ~30 matches per query
    distmat = rng.integers(0, 10, size=(60, 200)).astype(np.float32)
    ref = _brute(distmat, q_ids, g_ids, q_cams, g_cams, 10)
    base = M.query_gallery_metrics(distmat, q_ids, g_ids, q_cams, g_cams, max_rank=10)
    _assert_same(base, ref)
    monkeypatch.setattr(M, "_QG_BUDGET", 64)  # one query per batch, one threshold per comparison pass
    for compare_max in (0, 5, 1000):
        monkeypatch.setattr(M, "_QG_COMPARE_MAX", compare_max)
        res = M.query_gallery_metrics(distmat, q_ids, g_ids, q_cams, g_cams, max_rank=10)
        np.testing.assert_array_equal(res["cmc"], base["cmc"])
        assert (res["map"], res["minp"], res["n_queries"]) == (base["map"], base["minp"], base["n_queries"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_plain_argsort_market1501_without_ties(seed):
    rng = np.random.default_rng(seed)
    q_ids, g_ids, q_cams, g_cams = _layout("random", rng, 50, 300, 15)
    q_ids[0] = 99  # absent from the gallery
    distmat = rng.permuted(np.tile(np.arange(300.0), (50, 1)), axis=1) + rng.random((50, 1))  # distinct per row
    distmat[:, g_ids == q_ids[3]] -= 150.5  # nearer than most, and still no ties (other fractional part)
    assert all(len(np.unique(row)) == 300 for row in distmat.astype(np.float32))
    cmc, ap, inp = _argsort_market1501(distmat, q_ids, g_ids, q_cams, g_cams, 50)
    with pytest.warns(UserWarning, match="queries have no valid gallery match"):
        res = M.reid_from_distances(distmat, q_ids, g_ids, q_cams, g_cams)
    np.testing.assert_allclose(res["cmc"], cmc, rtol=0, atol=1e-12)
    assert res["map"] == pytest.approx(ap, rel=1e-12) and res["minp"] == pytest.approx(inp, rel=1e-12)
    # float32 copy of the same matrix (still tie-free): same numbers
    res32 = _quiet(M.reid_from_distances, torch.from_numpy(distmat.astype(np.float32)), q_ids, g_ids, q_cams, g_cams)
    assert res32["map"] == pytest.approx(ap, rel=1e-12)


def test_invariant_to_batch_size_and_gallery_order():
    rng = np.random.default_rng(5)
    q_ids, g_ids, q_cams, g_cams = _layout("random", rng, 70, 180, 8)
    distmat = rng.integers(0, 4, size=(70, 180)).astype(np.float64)
    base = _quiet(M.query_gallery_metrics, distmat, q_ids, g_ids, q_cams, g_cams, max_rank=30)
    perm = rng.permutation(180)
    variants = [_quiet(M.query_gallery_metrics, distmat, q_ids, g_ids, q_cams, g_cams, max_rank=30, batch_size=bs)
                for bs in (1, 2, 7, 1000)]
    variants.append(_quiet(M.query_gallery_metrics, distmat[:, perm], q_ids, g_ids[perm], q_cams, g_cams[perm],
                           max_rank=30))
    for res in variants:  # exactly equal, not just close
        np.testing.assert_array_equal(res["cmc"], base["cmc"])
        assert (res["map"], res["minp"], res["n_queries"], res["n_skipped"]) == (
            base["map"], base["minp"], base["n_queries"], base["n_skipped"])
    qperm = rng.permutation(70)  # reordering queries only reorders the final mean: equal up to rounding
    res = _quiet(M.query_gallery_metrics, distmat[qperm], q_ids[qperm], g_ids, q_cams[qperm], g_cams, max_rank=30)
    assert res["map"] == pytest.approx(base["map"], rel=1e-14) and res["minp"] == pytest.approx(base["minp"], rel=1e-14)


def test_constant_distances_give_the_worst_values():
    # query id 0 cam 0; gallery: 3 matches in other cameras, 1 junk (same camera), 6 others
    g_ids = np.array([0, 5, 0, 6, 0, 7, 8, 0, 9, 9])
    g_cams = np.array([1, 0, 2, 0, 1, 1, 2, 0, 1, 0])
    res = M.reid_from_distances(np.full((1, 10), 2.5), np.array([0]), g_ids, np.array([0]), g_cams, max_rank=10)
    # kept list: 6 non-matches, then the 3 matches at positions 6, 7, 8
    np.testing.assert_allclose(res["cmc"], [0] * 6 + [1] * 4)
    assert res["map"] == pytest.approx((1 / 7 + 2 / 8 + 3 / 9) / 3)
    assert res["minp"] == pytest.approx(3 / 9)
    # the worst case: any other distances are at least as good
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = M.reid_from_distances(rng.integers(0, 3, size=(1, 10)).astype(float), [0], g_ids, [0], g_cams)
        assert other["map"] >= res["map"] and other["minp"] >= res["minp"]


def test_ties_are_pessimistic_whatever_the_gallery_order():
    # distances: match and non-match tied at 1.0 -- whichever comes first in the gallery
    d = np.array([[1.0, 1.0, 0.5]])
    for g_ids in ([1, 2, 3], [2, 1, 3]):  # the match (id 1) before, then after the tied non-match
        res = M.query_gallery_metrics(d, [1], g_ids)
        assert res["cmc"][:3].tolist() == [0, 0, 1]  # 0.5 (id 3) first, then the tie: non-match first
        assert res["map"] == pytest.approx(1 / 3)


def test_nan_refused():
    d = np.zeros((2, 3))
    d[1, 2] = np.nan  # in the row of a query that would be skipped (id 7 has no match)
    with pytest.raises(ValueError, match="^distmat contains NaN$"):
        M.reid_from_distances(d, [0, 7], [0, 1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="^distances contains NaN$"):
        M.query_gallery_metrics(torch.tensor([[0.0, float("nan")]]), [0], [0, 1])


def test_infinite_distances():
    inf = np.inf
    # gallery: match at +inf, non-match at +inf, non-match at 3, match at -inf, match at 0
    d = np.array([[inf, inf, 3.0, -inf, 0.0]])
    res = M.query_gallery_metrics(d, [1], [1, 2, 3, 1, 1], max_rank=5)
    # order: -inf (match, 0), 0 (match, 1), 3 (non-match, 2), +inf tie: non-match 3 then match 4
    assert res["cmc"].tolist() == [1, 1, 1, 1, 1]
    assert res["map"] == pytest.approx((1 / 1 + 2 / 2 + 3 / 5) / 3)
    assert res["minp"] == pytest.approx(3 / 5)
    # random matrices with both infinities and ties, against the brute force
    rng = np.random.default_rng(2)
    q_ids, g_ids, q_cams, g_cams = _layout("random", rng, 30, 90, 6)
    distmat = rng.choice([-inf, 0.0, 1.0, 2.0, inf], size=(30, 90))
    for compare_max in (32, 0):
        M_ref = _brute(distmat, q_ids, g_ids, q_cams, g_cams, 10)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(M, "_QG_COMPARE_MAX", compare_max)
            _assert_same(_quiet(M.reid_from_distances, distmat, q_ids, g_ids, q_cams, g_cams, max_rank=10), M_ref)


def test_retrieval_multiple_positives_hand_worked():
    # image -> text: 2 images, each with its captions as positives; scores, higher is better
    caption_ids = np.array([0, 0, 1, 0, 1, 1, 2])  # caption 6 belongs to an image not queried
    scores = np.array([
        [0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.95],  # image 0: order 6, 0*, 2, 3*, 5, 4, 1* -> positions 1, 3, 6
        [0.5, 0.5, 0.5, 0.1, 0.9, 0.0, 0.2],   # image 1: 4*, then a 3-way tie {0, 1, 2*}: 2* after 0 and 1
    ])                                          #   -> 4*(0), 0, 1, 2*(3), 6, 3, 5*(6)
    res = M.query_gallery_metrics(scores, [0, 1], caption_ids, similarity=True, max_rank=5)
    ap0 = (1 / 2 + 2 / 4 + 3 / 7) / 3
    ap1 = (1 / 1 + 2 / 4 + 3 / 7) / 3
    assert res["map"] == pytest.approx((ap0 + ap1) / 2)
    assert res["minp"] == pytest.approx((3 / 7 + 3 / 7) / 2)
    np.testing.assert_allclose(res["cmc"], [0.5, 1, 1, 1, 1])  # Recall@1 = 1/2
    assert (res["n_queries"], res["n_skipped"]) == (2, 0)
    # the same as distances (negated scores) and with cameras = None through reid_from_distances
    assert M.reid_from_distances(-scores, [0, 1], caption_ids, None, None, max_rank=5)["map"] == res["map"]


def test_skipped_queries_counted_and_warned_once():
    g_ids = np.array([0, 0, 1, 2])
    g_cams = np.array([0, 1, 0, 0])
    q_ids = np.array([0, 1, 3, 2, 0])  # 1: only in its own camera; 3: absent; 2: own camera only
    q_cams = np.array([0, 0, 0, 0, 1])
    d = np.arange(20.0).reshape(5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = M.reid_from_distances(d, q_ids, g_ids, q_cams, g_cams, max_rank=2)
    assert len(caught) == 1 and "3 of 5 queries have no valid gallery match (same id, different camera)" in str(
        caught[0].message)
    assert (res["n_queries"], res["n_skipped"]) == (2, 3)
    # query 0 (cam 0): kept [0(cam1)*, 1, 2] -> position 0; query 4 (cam 1): kept [0(cam0)*, 1, 2] -> 0
    assert res["map"] == 1.0 and res["cmc"].tolist() == [1.0, 1.0]
    with pytest.warns(UserWarning, match=r"1 of 2 queries have no valid gallery match \(same id\)"):
        M.query_gallery_metrics(np.zeros((2, 2)), [0, 5], [0, 1])
    with pytest.raises(ValueError, match="no query has a valid gallery match; all 2 would be skipped|all 2 would"):
        M.query_gallery_metrics(np.zeros((2, 2)), [4, 5], [0, 1])


def test_dtypes_and_devices_give_the_same_numbers():
    rng = np.random.default_rng(4)
    q_ids, g_ids, q_cams, g_cams = _layout("random", rng, 20, 64, 5)
    d = rng.integers(0, 5, size=(20, 64))
    ref = _brute(d.astype(float), q_ids, g_ids, q_cams, g_cams, 5)
    for x in (d, d.astype(np.float32), torch.from_numpy(d).half(), torch.from_numpy(d).bfloat16()):
        _assert_same(_quiet(M.reid_from_distances, x, q_ids, g_ids, q_cams, g_cams, max_rank=5), ref)
    if torch.cuda.is_available():
        cuda = torch.from_numpy(d.astype(np.float32)).cuda()
        for compare_max in (32, 0):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(M, "_QG_COMPARE_MAX", compare_max)
                _assert_same(_quiet(M.reid_from_distances, cuda, q_ids, g_ids, q_cams, g_cams, max_rank=5), ref)


def test_reid_metrics_uses_the_pessimistic_engine():
    rng = np.random.default_rng(6)
    q_ids, g_ids, q_cams, g_cams = _layout("random", rng, 25, 80, 6)
    qf = rng.integers(0, 2, size=(25, 3)).astype(np.float32)  # few distinct distances: many ties
    gf = rng.integers(0, 2, size=(80, 3)).astype(np.float32)
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1).astype(np.float64)
    for cams in ((q_cams, g_cams), (None, None)):
        ref = _brute(dist, q_ids, g_ids, *cams, 5)
        res = _quiet(M.reid_metrics, qf, q_ids, cams[0], gf, g_ids, cams[1], ranks=(1, 5), batch_size=3)
        assert res["map"] == pytest.approx(ref["map"], rel=1e-12)
        assert res["minp"] == pytest.approx(ref["minp"], rel=1e-12)
        assert [res["rank1"], res["rank5"]] == pytest.approx([ref["cmc"][0], ref["cmc"][4]], abs=1e-12)
        assert (res["n_queries"], res["n_skipped"]) == (ref["n_queries"], ref["n_skipped"])


def test_validation():
    d = np.zeros((2, 3))
    with pytest.raises(ValueError, match="q_camids and g_camids must both be given or both be None"):
        M.reid_from_distances(d, [0, 1], [0, 1, 2], [0, 0], None)
    with pytest.raises(ValueError, match=r"g_ids must have shape \(3,\), got \(2,\)"):
        M.query_gallery_metrics(d, [0, 1], [0, 1])
    with pytest.raises(TypeError, match="q_cams must hold integer ids, got dtype torch.float64"):
        M.query_gallery_metrics(d, [0, 1], [0, 1, 2], [0.0, 1.0], [0, 0, 0])
    with pytest.raises(ValueError, match=r"distances must be 2-D"):
        M.query_gallery_metrics(np.zeros(3), [0], [0, 1, 2])
    with pytest.raises(TypeError, match="distmat must hold real numbers"):
        M.reid_from_distances(np.zeros((1, 2), bool), [0], [0, 1], [0], [1, 1])
    with pytest.raises(ValueError, match="max_rank must be >= 1"):
        M.query_gallery_metrics(d, [0, 1], [0, 1, 2], max_rank=0)
    with pytest.raises(TypeError, match="similarity must be a bool"):
        M.query_gallery_metrics(d, [0, 1], [0, 1, 2], similarity="yes")


@pytest.mark.parametrize("n_g", [1, 7, 8, 9, 2040, 2041, 5000])
def test_counting_kernels_agree(n_g, monkeypatch):
    rng = np.random.default_rng(n_g)
    d = rng.integers(-3, 4, size=(6, n_g)).astype(np.float32)
    d[0, : min(n_g, 3)] = [np.inf, -np.inf, np.inf][: min(n_g, 3)]
    t = np.sort(rng.choice(np.array([-np.inf, -1, 0, 0, 2, np.inf], np.float32), size=(4, 5)), axis=1)
    rows = np.array([5, 0, 3, 3])
    for flip in (False, True):
        sign = -1.0 if flip else 1.0
        want = np.array([[(sign * d[r] <= x).sum() for x in t[i]] for i, r in enumerate(rows)])
        for compare_max in (32, 0):  # comparisons, then searchsorted + histogram
            monkeypatch.setattr(M, "_QG_COMPARE_MAX", compare_max)
            np.testing.assert_array_equal(M._count_at_most(d, rows, t, flip, []), want)
            np.testing.assert_array_equal(M._count_at_most(torch.from_numpy(d[rows]), None, t, flip, []), want)
    mask = rng.random((3, M._padded_width(n_g))) < 0.5
    mask[:, n_g:] = False
    np.testing.assert_array_equal(M._count_true(mask, n_g), mask.sum(axis=1))

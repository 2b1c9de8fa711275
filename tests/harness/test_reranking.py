"""k-reciprocal re-ranking (:mod:`harness.reranking`) against a plain reference written here.

The reference follows Zhong et al.'s definitions one row (and one pair) at a time, in float64
after the normalised distance: neighbour lists from a stable ``argsort``, ``R(i, k)`` by
membership tests, the 2/3 expansion rule, dense ``V``, the Jaccard distance as
``sum(min) / sum(max)``. The conventions it shares with the implementation re-ID toolkits use
(torchreid's ``re_ranking``): distances squared and divided by their column maximum, neighbour
lists of ``k + 1`` entries (the image itself included), ``round(k1 / 2)`` half to even, a strict
"more than 2/3", the Jaccard sums over queries and gallery together.
"""

import numpy as np
import pytest
import torch

from harness import reranking as RR
from harness.metrics import reid_from_distances
from harness.reranking import k_reciprocal_rerank, rerank_from_features


def _plain_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, union="max"):
    n_q = len(q_q)
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    sq = (full**2).astype(np.float32)
    d = (sq / sq.max(axis=0)).T  # d[i, x] = F[x, i]**2 / max_y F[y, i]**2
    n = len(d)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):  # R(i, k): x among i's k + 1 nearest with i among x's
        return [int(x) for x in rank[i, : k + 1] if i in rank[x, : k + 1]]

    half = int(np.around(k1 / 2))
    full_sets = [reciprocal(i, k1) for i in range(n)]
    half_sets = [reciprocal(i, half) for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        r = set(full_sets[i])
        expanded = set(r)
        for c in full_sets[i]:
            if 3 * len(set(half_sets[c]) & r) > 2 * len(half_sets[c]):  # more than 2/3 inside R(i, k1)
                expanded |= set(half_sets[c])
        members = sorted(expanded)
        w = np.exp(-d[i, members].astype(np.float64))
        v[i, members] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.empty((n_q, n))
    for i in range(n_q):
        for g in range(n):
            both = np.minimum(v[i], v[g]).sum()
            jaccard[i, g] = 1 - both / (np.maximum(v[i], v[g]).sum() if union == "max" else 2 - both)
    return (1 - lambda_value) * jaccard[:, n_q:] + lambda_value * d[:n_q, n_q:]


def _features(rng, n, dim=8, ids=6):
    centres = rng.standard_normal((ids, dim))
    return centres[rng.integers(0, ids, size=n)] + 0.7 * rng.standard_normal((n, dim))


def _sq_euclidean(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)


def _matrices(rng, n_q, n_g, dim=8, dtype=np.float32):
    x = _features(rng, n_q + n_g, dim)
    d = _sq_euclidean(x, x).astype(dtype)
    return d[:n_q, n_q:], d[:n_q, :n_q], d[n_q:, n_q:]


@pytest.mark.parametrize("params", [dict(), dict(k1=5, k2=3, lambda_value=0.5), dict(k1=7, k2=1, lambda_value=0.0),
                                    dict(k1=2, k2=9, lambda_value=0.9), dict(k1=40, k2=6)])  # fmt: skip
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_plain_reference(seed, params):
    rng = np.random.default_rng(seed)
    q_g, q_q, g_g = _matrices(rng, 12, 40)
    ours = k_reciprocal_rerank(q_g, q_q, g_g, **params)
    assert ours.dtype == np.float32 and ours.shape == (12, 40)
    np.testing.assert_allclose(ours, _plain_rerank(q_g, q_q, g_g, **params), rtol=0, atol=1e-6)


def test_equals_the_plain_reference_on_asymmetric_float64_and_tied_inputs():
    rng = np.random.default_rng(2)
    # asymmetric matrices (F is not symmetric: rows and columns of the reference differ)
    q_g, q_q, g_g = rng.random((10, 30)), rng.random((10, 10)), rng.random((30, 30))
    # non-zero self-distances: an image may not be its own nearest and its set R* may be empty;
    # its row of V is then zero, rows no longer all sum to 1 and the reference's union,
    # 2 - sum(min), is not sum(max). The reference's is kept.
    ours = k_reciprocal_rerank(q_g, q_q, g_g, k1=6, k2=3)
    np.testing.assert_allclose(ours, _plain_rerank(q_g, q_q, g_g, k1=6, k2=3, union="2-min"), rtol=0, atol=1e-6)
    assert np.abs(ours - _plain_rerank(q_g, q_q, g_g, k1=6, k2=3)).max() > 1e-3
    np.fill_diagonal(q_q, 0)  # each image its own nearest: every R* holds it, the two unions agree
    np.fill_diagonal(g_g, 0)
    np.testing.assert_allclose(k_reciprocal_rerank(q_g, q_q, g_g, k1=6, k2=3),
                               _plain_rerank(q_g, q_q, g_g, k1=6, k2=3), rtol=0, atol=1e-6)
    # integer features: many equal distances, broken by lower index first as a stable argsort does
    x = rng.integers(0, 3, size=(50, 3)).astype(np.float64)
    d = _sq_euclidean(x, x)
    args = d[:10, 10:], d[:10, :10], d[10:, 10:]
    np.testing.assert_allclose(k_reciprocal_rerank(*args, k1=6, k2=3), _plain_rerank(*args, k1=6, k2=3),
                               rtol=0, atol=1e-6)


def test_blocks_and_tiles_do_not_change_a_bit(monkeypatch):
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        q_g, q_q, g_g = _matrices(rng, 15, 45, dtype=dtype)
        base = k_reciprocal_rerank(q_g, q_q, g_g, k1=8, k2=4)
        with monkeypatch.context() as m:
            m.setattr(RR, "_BUDGET", 1)  # one row (one query, one image) per block
            m.setattr(RR, "_TILE", 3)
            np.testing.assert_array_equal(k_reciprocal_rerank(q_g, q_q, g_g, k1=8, k2=4), base)
        # the same matrices as tensors: same numbers
        tensors = [torch.from_numpy(a) for a in (q_g, q_q, g_g)]
        np.testing.assert_array_equal(k_reciprocal_rerank(*tensors, k1=8, k2=4), base)


def test_lambda_one_is_the_normalised_squared_distance_and_ranks_as_the_input():
    rng = np.random.default_rng(4)
    q_g, q_q, g_g = _matrices(rng, 10, 50, dtype=np.float64)
    out = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.0)
    # torchreid returns d(i, g) = q_g**2 / (largest squared distance from query i, to queries or gallery),
    # squares rounded to float32 and divided in float32; 0 x Jaccard + 1 x d is d exactly
    sq = (q_g**2).astype(np.float32)
    scale = np.maximum((q_q**2).astype(np.float32).max(axis=0), sq.max(axis=1))
    np.testing.assert_array_equal(out, sq / scale[:, None])
    np.testing.assert_array_equal(np.argsort(out, axis=1), np.argsort(q_g, axis=1))
    ids = rng.integers(0, 5, size=60)
    cams = np.arange(60) % 2
    before = reid_from_distances(q_g, ids[:10], ids[10:], cams[:10], cams[10:])
    after = reid_from_distances(out, ids[:10], ids[10:], cams[:10], cams[10:])
    assert after["map"] == pytest.approx(before["map"], rel=1e-12)
    np.testing.assert_array_equal(after["cmc"], before["cmc"])
    # lambda_value = 0: the Jaccard distance alone, in [0, 1]
    jac = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=0.0)
    assert jac.min() >= 0 and jac.max() <= 1
    np.testing.assert_allclose(0.7 * jac + 0.3 * out, k_reciprocal_rerank(q_g, q_q, g_g), atol=1e-6)


def test_permuting_the_gallery_or_the_queries_permutes_the_result():
    rng = np.random.default_rng(5)
    q_g, q_q, g_g = _matrices(rng, 14, 60)
    base = k_reciprocal_rerank(q_g, q_q, g_g)
    p = rng.permutation(60)
    np.testing.assert_allclose(k_reciprocal_rerank(q_g[:, p], q_q, g_g[p][:, p]), base[:, p], rtol=0, atol=1e-6)
    r = rng.permutation(14)
    np.testing.assert_allclose(k_reciprocal_rerank(q_g[r], q_q[r][:, r], g_g), base[r], rtol=0, atol=1e-6)


def test_a_reciprocal_neighbour_of_the_true_matches_moves_up():
    # 2-D points, Euclidean distances. Query q (id 1); gallery A1, A2, A3 (id 1), X, B1, B2, B3 (id 2).
    # A3 is far from q (2.26) but among the 3 nearest of A1 and A2, which are q's nearest; X is
    # nearer to q (2.0), but X's 3 nearest are B1, B2, B3, so X is no reciprocal neighbour of q.
    points = np.array([[0, 0], [1, 0], [0, 1.1], [1.6, 1.6], [-2, 0], [-3, 0], [-2, -1], [-3, -1.2]])
    d = np.sqrt(_sq_euclidean(points, points))
    q_g, q_q, g_g = d[:1, 1:], d[:1, :1], d[1:, 1:]
    g_ids, g_cams = np.array([1, 1, 1, 2, 2, 2, 2]), np.ones(7, dtype=np.int64)
    # before: A1, A2, X, B2, A3 -> matches at positions 0, 1, 4: AP = (1/1 + 2/2 + 3/5) / 3 = 13/15
    before = reid_from_distances(q_g, [1], g_ids, [0], g_cams)
    assert before["map"] == pytest.approx(13 / 15)
    for k2 in (1, 2, 3):
        out = k_reciprocal_rerank(q_g, q_q, g_g, k1=3, k2=k2, lambda_value=0.3)
        assert np.argsort(out[0])[:3].tolist() == [0, 1, 2]  # A1, A2, A3 first
        assert reid_from_distances(out, [1], g_ids, [0], g_cams)["map"] == 1.0
        # q and X share no reciprocal neighbour: Jaccard 1, and 0.3 x d(q, X) = 0.3 x 2**2 / (q's farthest)**2
        assert out[0, 3] == pytest.approx(0.7 + 0.3 * 4 / d[0].max() ** 2, rel=1e-6)
        assert out[0, 2] < 0.7  # A3 shares A1 and A2 with q
    np.testing.assert_allclose(k_reciprocal_rerank(q_g, q_q, g_g, k1=3, k2=2), _plain_rerank(q_g, q_q, g_g, 3, 2),
                               atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_from_features(metric):
    rng = np.random.default_rng(6)
    qf, gf = _features(rng, 9), _features(rng, 31)  # float64: the matrices are computed in float64
    if metric == "cosine":
        qn, gn = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (qf, gf))
        mats = 1 - qn @ gn.T, 1 - qn @ qn.T, 1 - gn @ gn.T
    else:
        mats = _sq_euclidean(qf, gf), _sq_euclidean(qf, qf), _sq_euclidean(gf, gf)
    want = k_reciprocal_rerank(*mats, k1=6, k2=3, lambda_value=0.2)
    got = rerank_from_features(qf, torch.from_numpy(gf), metric=metric, k1=6, k2=3, lambda_value=0.2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_validation():
    q_g, q_q, g_g = np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3))
    with pytest.raises(ValueError, match=r"^q_q must have shape \(2, 2\) \(n_q = q_g.shape\[0\]\), got \(3, 3\)$"):
        k_reciprocal_rerank(q_g, g_g, g_g)
    with pytest.raises(ValueError, match=r"^g_g must have shape \(3, 3\) \(n_g = q_g.shape\[1\]\), got \(2, 2\)$"):
        k_reciprocal_rerank(q_g, q_q, q_q)
    with pytest.raises(ValueError, match=r"^q_g must be 2-D, got shape \(3,\)$"):
        k_reciprocal_rerank(np.ones(3), q_q, g_g)
    with pytest.raises(ValueError, match="at least one query and one gallery entry, got shape"):
        k_reciprocal_rerank(np.ones((2, 0)), q_q, np.ones((0, 0)))
    with pytest.raises(TypeError, match="^g_g must hold real numbers, got dtype bool$"):
        k_reciprocal_rerank(q_g, q_q, np.ones((3, 3), bool))
    bad = g_g.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="^g_g contains NaN or infinite values$"):
        k_reciprocal_rerank(q_g, q_q, bad)
    with pytest.raises(ValueError, match="^k1 must be >= 1, got 0$"):
        k_reciprocal_rerank(q_g, q_q, g_g, k1=0)
    with pytest.raises(TypeError, match="^k2 must be an int, got float$"):
        k_reciprocal_rerank(q_g, q_q, g_g, k2=2.0)
    with pytest.raises(ValueError, match=r"^lambda_value must be in \[0, 1\], got 1.5$"):
        k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match=r"^lambda_value must be in \[0, 1\], got nan$"):
        k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=float("nan"))
    with pytest.raises(TypeError, match="^lambda_value must be a real number, got str$"):
        k_reciprocal_rerank(q_g, q_q, g_g, lambda_value="0.3")
    with pytest.raises(ValueError, match="^query 0 is at distance 0 from every query and gallery entry"):
        k_reciprocal_rerank(np.zeros((2, 3)), np.zeros((2, 2)), g_g)
    with pytest.raises(ValueError, match="^metric must be 'euclidean' or 'cosine', got 'l1'$"):
        rerank_from_features(np.ones((2, 4)), np.ones((3, 4)), metric="l1")
    with pytest.raises(ValueError, match="must have the same dim, got 4 and 5"):
        rerank_from_features(np.ones((2, 4)), np.ones((3, 5)))

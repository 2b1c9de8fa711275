"""Tests for harness.metrics against independent references (sklearn, naive loops, hand-worked cases)."""

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from harness import metrics as M


# ----------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mse_msle_rmsle_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.gamma(2.0, 3.0, size=200)
    p = rng.gamma(2.0, 3.0, size=200)
    p[:20] = y[:20]  # exact ties
    assert M.mean_squared_error(y, p) == pytest.approx(skm.mean_squared_error(y, p), rel=1e-12)
    msle = M.mean_squared_log_error(y, p)
    assert msle == pytest.approx(skm.mean_squared_log_error(y, p), rel=1e-12)
    assert M.root_mean_squared_log_error(y, p) == pytest.approx(math.sqrt(msle), rel=1e-12)
    if hasattr(skm, "root_mean_squared_log_error"):
        assert M.root_mean_squared_log_error(y, p) == pytest.approx(skm.root_mean_squared_log_error(y, p), rel=1e-12)


def test_regression_hand_worked_and_torch_input():
    assert M.mean_squared_error([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / 3)
    y, p = np.array([0.0, math.e - 1]), np.array([0.0, 0.0])
    assert M.mean_squared_log_error(y, p) == pytest.approx(0.5)
    assert M.mean_squared_error(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0])) == pytest.approx(0.5)


def test_msle_negative_values():
    with pytest.raises(ValueError, match=r"y_pred contains negative values \(min -0\.3\); pass clip_negative=True"):
        M.mean_squared_log_error([1.0, 2.0], [0.5, -0.3])
    with pytest.raises(ValueError, match=r"y_true contains negative values \(min -2\)"):
        M.mean_squared_log_error([-2.0, 2.0], [0.5, 0.3])
    with pytest.raises(ValueError, match="y_pred contains negative"):
        M.root_mean_squared_log_error([1.0, 2.0], [0.5, -0.3])
    clipped = M.mean_squared_log_error([1.0, 2.0], [0.5, -0.3], clip_negative=True)
    assert clipped == pytest.approx(skm.mean_squared_log_error([1.0, 2.0], [0.5, 0.0]))


def test_regression_validation():
    with pytest.raises(ValueError, match="y_pred contains NaN"):
        M.mean_squared_error([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="y_true contains NaN"):
        M.mean_squared_log_error([np.nan, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        M.mean_squared_error([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"y_true must be 1-D, got shape \(2, 2\)"):
        M.mean_squared_error([[1, 2], [3, 4]], [1, 2])
    with pytest.raises(TypeError, match="y_pred must be numeric"):
        M.mean_squared_error([1, 2], ["a", "b"])
    with pytest.raises(ValueError, match="y_true is empty"):
        M.mean_squared_error([], [])


# ----------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------


def _tied_proba(rng, n, c):
    """Probabilities on a coarse grid so many rows hold tied scores."""
    raw = rng.integers(0, 4, size=(n, c)).astype(np.float64) + 1.0
    return raw / raw.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = 300, 6
    proba = _tied_proba(rng, n, c)
    y = rng.integers(0, c, size=n)
    labels = np.arange(c)
    assert M.accuracy(y, proba) == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)))
    assert M.accuracy(y, proba.argmax(axis=1)) == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)))
    for k in (1, 2, 3, 5):
        assert M.top_k_accuracy(y, proba, k) == pytest.approx(skm.top_k_accuracy_score(y, proba, k=k, labels=labels))
    assert M.log_loss(y, proba) == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-12)


def test_classification_hand_worked():
    proba = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert M.accuracy([0, 2], proba) == 1.0  # argmax tie -> lowest index
    assert M.top_k_accuracy([0, 2], proba, 1) == 0.5  # sklearn tie rule -> higher index first
    assert M.log_loss([0, 2], proba) == pytest.approx(-(math.log(0.5) + math.log(0.5)) / 2)
    assert M.accuracy(["a", "b", "c"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    assert math.isfinite(M.log_loss([2], [[0.5, 0.5, 0.0]]))  # clipped


def test_classification_validation():
    with pytest.raises(ValueError, match=r"y_true must hold class indices in \[0, 3\)"):
        M.top_k_accuracy([0, 3], np.full((2, 3), 1 / 3), 1)
    with pytest.raises(ValueError, match="y_proba rows must sum to 1, got row 1"):
        M.log_loss([0, 1], [[0.5, 0.5], [0.5, 0.6]])
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        M.top_k_accuracy([0], [[1.0, 0.0]], 0)
    with pytest.raises(TypeError, match="y_true must hold integer class indices"):
        M.log_loss([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]])


# ----------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------


def _naive_rank(scores_row, target, history_items):
    if target in history_items:
        return M.UNRANKED  # masked with the history: a miss
    rank = 0
    for j, s in enumerate(scores_row):
        if j == target or j in history_items:
            continue
        if s >= scores_row[target]:
            rank += 1
    return rank


def _random_ranking_case(seed, b=40, n_items=30):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(b, n_items)).astype(np.float32)  # many ties
    targets = rng.integers(0, n_items, size=b)
    history = [rng.choice(n_items, size=rng.integers(0, 10), replace=False) for _ in range(b)]
    history[0] = np.array([targets[0], (targets[0] + 1) % n_items])  # target inside history
    history[1] = np.array([], dtype=np.int64)
    history[2] = []  # plain empty list (float dtype once converted)
    return scores, targets, history


def _as_mask(history, b, n_items):
    mask = np.zeros((b, n_items), dtype=bool)
    for i, h in enumerate(history):
        mask[i, h] = True
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_ranks_match_naive_loop(seed):
    scores, targets, history = _random_ranking_case(seed)
    b, n = scores.shape
    expected = np.array([_naive_rank(scores[i], targets[i], set(np.asarray(history[i]).tolist())) for i in range(b)])
    np.testing.assert_array_equal(M.target_ranks(scores, targets, history), expected)
    np.testing.assert_array_equal(M.target_ranks(scores, targets, _as_mask(history, b, n)), expected)
    np.testing.assert_array_equal(
        M.target_ranks(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(_as_mask(history, b, n))),
        expected,
    )
    no_hist = np.array([_naive_rank(scores[i], targets[i], set()) for i in range(b)])
    np.testing.assert_array_equal(M.target_ranks(scores, targets), no_hist)
    for k in (1, 5, 10):
        per_row_ndcg = [1 / math.log2(r + 2) if r < k else 0.0 for r in expected]
        per_row_mrr = [1 / (r + 1) if r < k else 0.0 for r in expected]
        assert M.hit_at_k(expected, k) == pytest.approx(np.mean(expected < k))
        assert M.recall_at_k(expected, k) == M.hit_at_k(expected, k)
        assert M.ndcg_at_k(expected, k) == pytest.approx(np.mean(per_row_ndcg))
        assert M.mrr_at_k(expected, k) == pytest.approx(np.mean(per_row_mrr))
        np.testing.assert_allclose(M.ndcg_at_k(expected, k, per_row=True), per_row_ndcg)


def test_recbole_style_hand_worked_example():
    # 5 items; item 0 is in the history (masked) despite its top score.
    scores = np.array([[0.9, 0.1, 0.8, 0.7, 0.3]])
    ranks = M.target_ranks(scores, [4], history_mask=[np.array([0])])
    assert ranks.tolist() == [2]  # items 2 and 3 beat the target
    assert M.ndcg_at_k(ranks, 3) == pytest.approx(1 / math.log2(4))
    assert M.mrr_at_k(ranks, 3) == pytest.approx(1 / 3)
    assert M.hit_at_k(ranks, 2) == 0.0
    assert M.ndcg_at_k(ranks, 2) == 0.0


def test_constant_scores_rank_last():
    ranks = M.target_ranks(np.zeros((3, 10)), [0, 4, 9])
    assert ranks.tolist() == [9, 9, 9]
    assert M.ranking_report(ranks, ks=(5,))["hit@5_full"] == 0.0


def test_target_ranks_validation():
    with pytest.raises(ValueError, match="scores contains NaN"):
        M.target_ranks(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match=r"targets must hold item ids in \[0, 2\)"):
        M.target_ranks(np.ones((1, 2)), [2])
    with pytest.raises(TypeError, match="targets must hold integer item ids"):
        M.target_ranks(np.ones((1, 2)), [0.0])
    with pytest.raises(ValueError, match=r"history_mask must have shape \(1, 2\)"):
        M.target_ranks(np.ones((1, 2)), [0], np.zeros((1, 3), dtype=bool))
    with pytest.raises(ValueError, match="ranks must be >= 0"):
        M.hit_at_k([-1, 2], 1)


def test_batched_equals_unbatched():
    scores, targets, history = _random_ranking_case(3, b=53)
    full = M.target_ranks(scores, targets, history)
    table = torch.from_numpy(scores)
    calls = []

    def score_fn(rows):
        calls.append(len(rows))
        return table[rows]

    rows = torch.arange(len(targets))
    for hist in (history, _as_mask(history, *scores.shape)):
        got = M.batched_target_ranks(score_fn, rows, targets, hist, batch_size=16)
        np.testing.assert_array_equal(got, full)
    assert calls[:4] == [16, 16, 16, 5]
    got = M.batched_target_ranks(lambda r: scores[r], np.arange(len(targets)), targets, history, batch_size=7, device="cpu")
    np.testing.assert_array_equal(got, full)


def test_topn_path_agrees_with_scores_path():
    rng = np.random.default_rng(4)
    b, n_items, n = 50, 40, 10
    scores = rng.standard_normal((b, n_items))  # tie-free
    targets = rng.integers(0, n_items, size=b)
    history = [rng.choice(np.setdiff1d(np.arange(n_items), [t]), size=5, replace=False) for t in targets]
    masked = scores.copy()
    for i, h in enumerate(history):
        masked[i, h] = -np.inf
    topn = np.argsort(-masked, axis=1, kind="stable")[:, :n]
    from_scores = M.target_ranks(scores, targets, history)
    from_topn = M.ranks_from_topn(topn, targets)
    inside = from_scores < n
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(from_topn[inside], from_scores[inside])
    assert (from_topn[~inside] == M.UNRANKED).all()
    for k in (1, 5, 10):
        assert M.ndcg_at_k(from_topn, k) == pytest.approx(M.ndcg_at_k(from_scores, k))
    assert M.hit_at_k(from_topn, 20) <= M.hit_at_k(from_scores, 20)  # short lists are not rewarded


def test_ranks_from_topn_hand_worked():
    ranks = M.ranks_from_topn([[3, 1, 2], [5, 6, 7], [9, 9, 9]], [2, 0, 9])
    assert ranks.tolist() == [2, M.UNRANKED, 0]


def test_ranking_report_keys_and_values():
    ranks = np.array([0, 1, 4, 30])
    rep = M.ranking_report(ranks, ks=(1, 5), protocol="sampled")
    assert set(rep) == {f"{m}@{k}_sampled" for m in ("hit", "recall", "ndcg", "mrr") for k in (1, 5)}
    assert rep["hit@5_sampled"] == 0.75
    assert rep["ndcg@1_sampled"] == 0.25
    with pytest.raises(ValueError, match="protocol must be one of"):
        M.ranking_report(ranks, protocol="partial")


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_negatives_reproducible_and_valid(sampling):
    rng = np.random.default_rng(5)
    b, n_items, n_neg = 64, 150, 100
    targets = rng.integers(0, n_items, size=b)
    history = [rng.choice(n_items, size=rng.integers(0, 40), replace=False) for _ in range(b)]
    pop = rng.integers(0, 50, size=n_items).astype(float) if sampling == "popularity" else None
    kw = dict(n_negatives=n_neg, sampling=sampling, item_popularity=pop)
    if pop is not None:
        pop[targets[:5]] = 0.0  # zero-popularity items must never be drawn
    neg1 = M.sample_negatives(targets, n_items, history, seed=1, **kw)
    neg2 = M.sample_negatives(targets, n_items, history, seed=1, **kw)
    neg3 = M.sample_negatives(targets, n_items, history, seed=2, **kw)
    np.testing.assert_array_equal(neg1, neg2)
    assert not np.array_equal(neg1, neg3)
    for i, row in enumerate(neg1):
        assert targets[i] not in row
        assert not np.isin(row, history[i]).any()
        if pop is not None:
            assert (pop[row] > 0).all()


def test_sampled_target_ranks():
    scores, targets, history = _random_ranking_case(6, b=30, n_items=200)
    kw = dict(n_negatives=20, seed=3)
    r1 = M.sampled_target_ranks(scores, targets, history, **kw)
    r2 = M.sampled_target_ranks(torch.from_numpy(scores), targets, _as_mask(history, *scores.shape), **kw)
    r3 = M.sampled_target_ranks(scores, targets, history, n_negatives=20, seed=4)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3)
    negs = M.sample_negatives(targets, scores.shape[1], history, **kw)
    expected = [(scores[i, negs[i]] >= scores[i, targets[i]]).sum() for i in range(len(targets))]
    for i in range(len(targets)):
        if targets[i] in history[i]:  # row 0 at least: a target in the history is a miss
            expected[i] = M.UNRANKED
    assert expected[0] == M.UNRANKED
    np.testing.assert_array_equal(r1, expected)
    assert r1[r1 != M.UNRANKED].max() <= 20
    via_fn = M.sampled_target_ranks(
        lambda cand: np.take_along_axis(scores, cand, axis=1), targets, history, n_items=scores.shape[1], **kw
    )
    np.testing.assert_array_equal(via_fn, r1)
    with pytest.raises(ValueError, match="history row 1 leaves no item to sample"):
        M.sample_negatives([0, 1], 3, [np.array([1]), np.array([0, 2])])


# ----------------------------------------------------------------------------
# Re-identification
# ----------------------------------------------------------------------------


def _reference_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid eval_market1501 + AGW mINP, ties against the query (non-matches first); padded CMC."""
    indices = np.lexsort((g_pids[None, :] == q_pids[:, None], distmat), axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp, skipped = [], [], [], 0
    for q_idx in range(distmat.shape[0]):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][~remove]
        if not np.any(raw_cmc):
            skipped += 1
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)))])
        all_cmc.append(cmc[:max_rank])
        tmp = np.asarray([x / (i + 1.0) for i, x in enumerate(raw_cmc.cumsum())]) * raw_cmc
        all_ap.append(tmp.sum() / raw_cmc.sum())
    return np.mean(all_cmc, axis=0), np.mean(all_ap), np.mean(all_inp), len(all_ap), skipped


def _reid_case(seed, n_q=37, n_g=120, n_ids=12, n_cams=3):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, n_ids, size=n_q)
    g_pids = rng.integers(0, n_ids, size=n_g)
    q_cams = rng.integers(0, n_cams, size=n_q)
    g_cams = rng.integers(0, n_cams, size=n_g)
    q_pids[0] = n_ids + 5  # identity absent from the gallery -> skipped
    q_pids[1] = n_ids + 6  # identity only seen by the query's own camera -> skipped
    g_pids[:3], g_cams[:3] = n_ids + 6, q_cams[1]
    return q_pids, g_pids, q_cams, g_cams, rng


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reid_from_distances_matches_torchreid_loop(seed):
    q_pids, g_pids, q_cams, g_cams, rng = _reid_case(seed)
    distmat = rng.integers(0, 8, size=(len(q_pids), len(g_pids))).astype(np.float64)  # many ties
    ref_cmc, ref_map, ref_minp, n_valid, n_skipped = _reference_market1501(distmat, q_pids, g_pids, q_cams, g_cams, 50)
    assert n_skipped >= 2
    with pytest.warns(UserWarning, match=f"{n_skipped} of {len(q_pids)} queries"):
        res = M.reid_from_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    np.testing.assert_allclose(res["cmc"], ref_cmc, rtol=1e-12)
    assert res["map"] == pytest.approx(ref_map, rel=1e-12)
    assert res["minp"] == pytest.approx(ref_minp, rel=1e-12)
    assert (res["n_queries"], res["n_skipped"]) == (n_valid, n_skipped)


def test_reid_hand_worked():
    # one query (id 1, cam 0); gallery sorted by distance: [id1 cam0 (junk), id2, id1 cam1, id3, id1 cam2]
    distmat = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    res = M.reid_from_distances(distmat, np.array([1]), np.array([1, 2, 1, 3, 1]), np.array([0]),
                                np.array([0, 0, 1, 1, 2]), max_rank=4)
    # kept list: [id2, id1, id3, id1] -> matches at positions 1 and 3
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1])
    assert res["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res["minp"] == pytest.approx(2 / 4)
    assert (res["n_queries"], res["n_skipped"]) == (1, 0)


def test_reid_all_skipped_raises():
    with pytest.raises(ValueError, match="no query has a valid gallery match"):
        M.reid_from_distances(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 0]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_reid_metrics_batched_equals_unbatched_and_reference(metric):
    q_pids, g_pids, q_cams, g_cams, rng = _reid_case(7, n_q=45, n_g=90)
    if metric == "euclidean":  # small ints -> exact distances, many ties
        qf = rng.integers(0, 3, size=(45, 8)).astype(np.float32)
        gf = rng.integers(0, 3, size=(90, 8)).astype(np.float32)
    else:  # +-1 in 4-D -> unit vectors of +-0.5, exact cosine distances, many ties
        qf = rng.choice([-1.0, 1.0], size=(45, 4)).astype(np.float32)
        gf = rng.choice([-1.0, 1.0], size=(90, 4)).astype(np.float32)
    gf[10:20] = gf[0]  # duplicated gallery features -> tied distances
    gf[30] = 0.0  # zero vector (cosine distance 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = M.reid_metrics(qf, q_pids, q_cams, gf, g_pids, g_cams, ranks=(1, 5, 10), metric=metric, batch_size=1000)
        small = M.reid_metrics(torch.from_numpy(qf), q_pids, q_cams, torch.from_numpy(gf), g_pids, g_cams,
                               ranks=(1, 5, 10), metric=metric, batch_size=4)
    assert full == small
    assert set(full) == {"map", "rank1", "rank5", "rank10", "minp", "n_queries", "n_skipped"}
    if metric == "euclidean":
        dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    else:
        norm = np.linalg.norm(gf, axis=1, keepdims=True)
        dist = 1.0 - (qf / 2.0) @ np.where(norm > 0, gf / np.maximum(norm, 1.0), 0.0).T
    cmc, ap, inp, n_valid, n_skipped = _reference_market1501(dist, q_pids, g_pids, q_cams, g_cams, 10)
    assert n_skipped >= 2
    assert [full["rank1"], full["rank5"], full["rank10"]] == pytest.approx([cmc[0], cmc[4], cmc[9]], rel=1e-12)
    assert full["map"] == pytest.approx(ap, rel=1e-12) and full["minp"] == pytest.approx(inp, rel=1e-12)
    assert (full["n_queries"], full["n_skipped"]) == (n_valid, n_skipped)


def test_reid_validation():
    with pytest.raises(ValueError, match="metric must be 'euclidean' or 'cosine'"):
        M.reid_metrics(np.ones((1, 2)), [0], [0], np.ones((1, 2)), [0], [1], metric="l1")
    with pytest.raises(ValueError, match="same dim, got 2 and 3"):
        M.reid_metrics(np.ones((1, 2)), [0], [0], np.ones((1, 3)), [0], [1])
    with pytest.raises(ValueError, match=r"gallery_ids must have shape \(1,\)"):
        M.reid_metrics(np.ones((1, 2)), [0], [0], np.ones((1, 2)), [0, 1], [1])


# ----------------------------------------------------------------------------
# Registry and dispatcher
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, task, greater",
    [
        ("mse", "regression", False), ("msle", "regression", False), ("rmsle", "regression", False),
        ("accuracy", "classification", True), ("top5_accuracy", "classification", True),
        ("log_loss", "classification", False), ("ndcg@10", "ranking", True), ("hit@10", "ranking", True),
        ("recall@10", "ranking", True), ("mrr@10", "ranking", True), ("ndcg@10_full", "ranking", True),
        ("ndcg@10_sampled", "ranking", True), ("map", "reid", True), ("rank1", "reid", True),
        ("cmc@5", "reid", True), ("minp", "reid", True),
    ],
)
def test_get_metric_directions(name, task, greater):
    m = M.get_metric(name)
    assert (m.name, m.task, m.greater_is_better) == (name, task, greater)
    assert m.worst == (-math.inf if greater else math.inf)
    assert m.better(1.0, 0.0) is greater
    assert m.better(0.0, 1.0) is (not greater)
    assert m.better(0.5, m.worst)


def test_get_metric_callables():
    ranks = np.array([0, 2, 12])
    assert M.get_metric("ndcg@10_full")(ranks) == M.ndcg_at_k(ranks, 10)
    assert M.get_metric("top2_accuracy")([0, 1], [[0.6, 0.4, 0.0], [0.5, 0.2, 0.3]]) == 0.5
    res = {"map": 0.4, "rank1": 0.7, "rank5": 0.9, "minp": 0.1}
    assert M.get_metric("cmc@5")(res) == 0.9 and M.get_metric("rank1")(res) == 0.7
    with pytest.raises(ValueError, match="no 'rank20'"):
        M.get_metric("rank20")(res)


def test_get_metric_unknown_names():
    with pytest.raises(ValueError, match=r"Unknown metric 'foo', valid metrics: mse, msle, rmsle, accuracy, .*ndcg@K.*e\.g\. ndcg@10"):
        M.get_metric("foo")
    for bad in ("ndcg@0", "ndcg", "ndcg@10_partial", "top0_accuracy", "MSE"):
        with pytest.raises(ValueError, match="Unknown metric"):
            M.get_metric(bad)
    with pytest.raises(TypeError, match="metric name must be a str"):
        M.get_metric(5)


def test_list_metrics_and_score():
    assert M.list_metrics("regression") == ["mse", "msle", "rmsle"]
    assert "ndcg@K" in M.list_metrics("ranking") and "minp" in M.list_metrics()
    with pytest.raises(ValueError, match="task must be one of"):
        M.list_metrics("vision")
    y, p = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0])
    assert M.score("rmsle", y, p) == M.root_mean_squared_log_error(y, p)
    assert M.score("msle", [1.0], [-1.0], clip_negative=True) == pytest.approx(math.log(2) ** 2)
    assert M.score("top1_accuracy", [0, 1], [[0.9, 0.1], [0.8, 0.2]]) == 0.5
    with pytest.raises(ValueError, match="'ndcg@10' is a ranking metric"):
        M.score("ndcg@10", y, p)

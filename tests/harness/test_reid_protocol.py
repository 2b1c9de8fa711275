"""The Market-1501 protocol of :func:`harness.metrics.reid_from_distances`, worked by hand.

torchreid's ``eval_market1501``: for each query, gallery entries with the query's pid *and* camera
are removed (junk); a query left without a match is skipped and counted; CMC, AP and (added here)
INP are read off the remaining list. Each case below is small enough to rank on paper: the
expected numbers are written as fractions, with the ranked list they come from.

A brute-force comparison with a plain ``argsort`` Market-1501 loop on random inputs (repeated
ids and cameras, distinct distances; mAP, the whole CMC curve and mINP to 1e-12) is
``test_equals_plain_argsort_market1501_without_ties`` in ``test_reid_metrics.py``.
"""

import warnings

import numpy as np
import pytest

from harness.metrics import query_gallery_metrics, reid_from_distances


def _rows(orders, n_g):
    """Distances whose ascending order is each ``orders[q]`` (gallery indices, nearest first)."""
    d = np.full((len(orders), n_g), 100.0)
    for q, order in enumerate(orders):
        d[q, order] = np.arange(1.0, len(order) + 1)
    return d


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# gallery for (a): index: pid, camera
G_IDS = np.array([1, 2, 1, 3, 4, 1, 2, 3])
G_CAMS = np.array([1, 0, 0, 0, 2, 2, 1, 0])


def test_query_with_matches_only_in_its_own_camera_is_skipped_and_changes_nothing_else():
    q_ids, q_cams = np.array([1, 2, 3]), np.array([0, 1, 0])
    orders = [
        [2, 4, 0, 3, 5, 1, 6, 7],  # q0 (pid 1, cam 0): 2 is junk -> [4, 0*, 3, 5*, 1, 6, 7]
        [6, 1, 0, 4, 2, 3, 5, 7],  # q1 (pid 2, cam 1): 6 is junk -> [1*, 0, 4, ...]
        [3, 7, 0, 1, 2, 4, 5, 6],  # q2 (pid 3, cam 0): both pid-3 entries (3, 7) are in camera 0
    ]
    d = _rows(orders, 8)
    with pytest.warns(UserWarning, match=r"^1 of 3 queries have no valid gallery match \(same id, different camera\)"):
        res = reid_from_distances(d, q_ids, G_IDS, q_cams, G_CAMS, max_rank=3)
    # q0: matches at 0-based positions 1 and 3 -> AP = (1/2 + 2/4) / 2 = 1/2, INP = 2/4, first hit at rank 2
    # q1: its match first -> AP = 1, INP = 1/1
    assert (res["n_queries"], res["n_skipped"]) == (2, 1)
    assert res["map"] == pytest.approx((1 / 2 + 1) / 2)  # 3/4
    assert res["minp"] == pytest.approx((1 / 2 + 1) / 2)  # 3/4
    np.testing.assert_allclose(res["cmc"], [1 / 2, 1, 1])
    # without q2, and with any other row for q2: the same numbers
    alone = reid_from_distances(d[:2], q_ids[:2], G_IDS, q_cams[:2], G_CAMS, max_rank=3)
    other = d.copy()
    other[2] = other[2, ::-1]
    for res2 in (alone, _quiet(reid_from_distances, other, q_ids, G_IDS, q_cams, G_CAMS, max_rank=3)):
        assert (res2["map"], res2["minp"], res2["n_queries"]) == (res["map"], res["minp"], 2)
        np.testing.assert_array_equal(res2["cmc"], res["cmc"])
    assert alone["n_skipped"] == 0


def test_distractors_only_push_matches_down():
    # query pid 1, camera 0; gallery: match A (cam 1) at 1, match B (cam 2) at 3, pid 5 at 4
    g_ids, g_cams, dist = [1, 1, 5], [1, 2, 1], [1.0, 3.0, 4.0]
    base = reid_from_distances(np.array([dist]), [1], g_ids, [0], g_cams)
    assert (base["map"], base["minp"]) == (1.0, 1.0)  # A*, B*, 5
    # a distractor: pid 0, which no query has -- in the query's own camera, and still not junk
    # (junk needs the query's pid): wherever it lands it can only lower AP and INP
    expected = {
        0.5: (7 / 12, 2 / 3),  # D, A*, B*: AP = (1/2 + 2/3) / 2, INP = 2/3
        2.0: (5 / 6, 2 / 3),   # A*, D, B*: AP = (1/1 + 2/3) / 2, INP = 2/3
        3.5: (1.0, 1.0),       # A*, B*, D: nothing moves
        9.0: (1.0, 1.0),
    }  # fmt: skip
    for at, (ap, inp) in expected.items():
        res = reid_from_distances(np.array([dist + [at]]), [1], g_ids + [0], [0], g_cams + [0])
        assert res["map"] == pytest.approx(ap) and res["minp"] == pytest.approx(inp)
        assert res["map"] <= base["map"] and res["minp"] <= base["minp"]
    # two distractors between the matches: A*, D, D, B* -> AP = (1/1 + 2/4) / 2 = 3/4, INP = 2/4
    res = reid_from_distances(np.array([dist + [2.0, 2.5]]), [1], g_ids + [0, 0], [0], g_cams + [0, 1])
    assert res["map"] == pytest.approx(3 / 4) and res["minp"] == pytest.approx(1 / 2)
    assert res["cmc"][0] == 1.0  # the first match is still first


def test_a_junk_pid_minus_one_entry_passed_in_is_an_ordinary_non_match():
    # torchreid's Market-1501 reader never puts pid -1 images (junk detections) in the gallery; the
    # evaluation has no rule for them: passed in, one is a non-match like any other. Hence the
    # dataset reader, not the metric, has to drop them.
    g_ids, g_cams = np.array([1, 7]), np.array([1, 1])
    clean = reid_from_distances(np.array([[2.0, 5.0]]), [1], g_ids, [0], g_cams)
    assert (clean["map"], clean["cmc"][0]) == (1.0, 1.0)
    for cam in (0, 1):  # in the query's camera or not: pid -1 is not the query's pid, never removed
        res = reid_from_distances(np.array([[2.0, 5.0, 1.0]]), [1], np.append(g_ids, -1), [0], np.append(g_cams, cam))
        # [-1, 1*, 7]: the match at position 1 -> AP = 1/2, Rank-1 missed, INP = 1/2
        assert res["map"] == pytest.approx(1 / 2) and res["minp"] == pytest.approx(1 / 2)
        assert res["cmc"][:2].tolist() == [0.0, 1.0]
    # a query of pid -1 would match the -1 entries like any id
    res = reid_from_distances(np.array([[2.0, 5.0, 1.0]]), [-1], np.append(g_ids, -1), [0], [1, 1, 1])
    assert res["map"] == 1.0


def test_same_camera_matches_that_would_rank_first_are_removed():
    # query pid 1, camera 0. Gallery (pid, camera), nearest first: J1 (1, 0), J2 (1, 0), X (2, 1),
    # M1 (1, 1), Y (3, 0), M2 (1, 2), M3 (1, 1), Z (4, 2)
    g_ids = np.array([1, 1, 2, 1, 3, 1, 1, 4])
    g_cams = np.array([0, 0, 1, 1, 0, 2, 1, 2])
    d = np.arange(1.0, 9.0)[None, :]
    res = reid_from_distances(d, [1], g_ids, [0], g_cams, max_rank=5)
    # kept: X, M1*, Y, M2*, M3*, Z -> matches at 0-based positions 1, 3, 4
    assert res["cmc"].tolist() == [0, 1, 1, 1, 1]  # Rank-1 missed although two pid-1 images are nearest
    assert res["map"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)  # 8/15
    assert res["minp"] == pytest.approx(3 / 5)
    # without cameras nothing is removed: J1*, J2*, X, M1*, Y, M2*, M3*, Z -> positions 0, 1, 3, 5, 6
    res = query_gallery_metrics(d, [1], g_ids, max_rank=5)
    assert res["cmc"][0] == 1.0
    assert res["map"] == pytest.approx((1 / 1 + 2 / 2 + 3 / 4 + 4 / 6 + 5 / 7) / 5)
    assert res["minp"] == pytest.approx(5 / 7)


def test_minp_by_hand():
    # INP = (number of matches) / (1-based position of the hardest match): the share of the list a
    # user reads to find every match. Two queries, no cameras (all kept), 10 gallery entries.
    g_ids = np.array([1, 9, 9, 9, 1, 2, 2, 9, 9, 2])
    orders = [
        list(range(10)),              # q pid 1: matches at positions 0 and 4 -> INP = 2/5
        [1, 5, 6, 0, 2, 3, 4, 7, 8, 9],  # q pid 2: matches at positions 1, 2, 9 -> INP = 3/10
    ]  # fmt: skip
    d = _rows(orders, 10)
    res = query_gallery_metrics(d, [1, 2], g_ids, max_rank=3)
    assert res["minp"] == pytest.approx((2 / 5 + 3 / 10) / 2)  # 7/20
    assert res["map"] == pytest.approx(((1 / 1 + 2 / 5) / 2 + (1 / 2 + 2 / 3 + 3 / 10) / 3) / 2)
    np.testing.assert_allclose(res["cmc"], [1 / 2, 1, 1])
    # bringing the hardest match of q2 from position 9 to 3 changes INP (3/10 -> 3/4), not Rank-1
    orders[1] = [1, 5, 6, 9, 0, 2, 3, 4, 7, 8]
    res2 = query_gallery_metrics(_rows(orders, 10), [1, 2], g_ids, max_rank=3)
    assert res2["minp"] == pytest.approx((2 / 5 + 3 / 4) / 2)  # 23/40
    np.testing.assert_array_equal(res2["cmc"], res["cmc"])
    # INP = 1 exactly when every match comes before every non-match
    first = query_gallery_metrics(_rows([[0, 4, 1, 2, 3, 5, 6, 7, 8, 9]], 10), [1], g_ids)
    assert (first["minp"], first["map"]) == (1.0, 1.0)

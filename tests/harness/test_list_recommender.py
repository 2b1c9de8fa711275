"""Families that decode ranked lists: the core masks histories, checks lists and ranks off them."""

import numpy as np
import pandas as pd
import pytest
import torch

from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.metrics import UNRANKED, get_metric
from harness.registry import FitContext
from harness.tasks.recommendation import TASK, ListRecommender, SequentialRecommender, mask_lists


def _scores(n_users: int, n_items: int) -> np.ndarray:
    """Distinct scores per user and item (no ties), so both paths rank without tie conventions."""
    scores = np.random.default_rng(3).permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float32)
    scores[:, 0] = -np.inf
    return scores


class FixedScores(SequentialRecommender):
    def fit_recommender(self, train, valid, ctx):
        self.table = torch.from_numpy(_scores(200, self.n_items))

    def score(self, part):
        return self.table[torch.as_tensor(part["user_id"].to_numpy().copy())]


class FixedLists(ListRecommender):
    """The same scores as :class:`FixedScores`, returned as whole sorted lists, histories included."""

    list_length = 20

    def fit_recommender(self, train, valid, ctx):
        self.table = _scores(200, self.n_items)

    def recommend(self, part, n):
        rows = self.table[part["user_id"].to_numpy()]
        order = np.argsort(-rows, axis=1, kind="stable")[:, : self.n_items - 1]
        return order, np.take_along_axis(rows, order, 1)


def _context(dataset, tmp_path, metric="ndcg@10_full"):
    return FitContext(dataset, get_metric(metric), TrainConfig(epochs=1, progress=False), "cpu", 0, 0, tmp_path / "f",
                      tmp_path / "c", lambda logs, step: None, log=lambda message: None)  # fmt: skip


def test_lists_give_the_scoring_paths_metrics_up_to_the_list_length(rec_dataset, tmp_path):
    train, valid = rec_dataset.train.iloc[:90], rec_dataset.train.iloc[90:]
    scored, listed = FixedScores(), FixedLists()
    for family in (scored, listed):
        family.fit(train, valid, _context(rec_dataset, tmp_path))
    a, b = scored.predict(valid), listed.predict(valid)
    assert b.sampled is None and b.items.shape == (len(valid), 20)
    for metric in ("ndcg@10_full", "hit@20_full", "mrr@20_full", "ndcg@5_full"):
        m = get_metric(metric)
        assert TASK.score(m, rec_dataset, valid, a) == pytest.approx(TASK.score(m, rec_dataset, valid, b), abs=1e-12)
    np.testing.assert_array_equal(a.items[:, :20], b.items)  # history masked the same way
    assert listed.validation_score(valid, _context(rec_dataset, tmp_path)) == pytest.approx(
        scored.validation_score(valid, _context(rec_dataset, tmp_path)))
    in_list = a.ranks < 20
    np.testing.assert_array_equal(b.ranks[in_list], a.ranks[in_list])
    assert (b.ranks[~in_list] == UNRANKED).all()  # beyond the list: a miss


def test_mask_lists_drops_history_repeats_and_padding_and_keeps_order():
    items = np.array([[5, 3, 5, 0, 7, 2], [1, 2, 3, 4, 0, 0]])
    scores = np.array([[9, 8, 7, 6, 5, 4], [4, 3, 2, 1, 0, 0]], np.float32)
    out, values = mask_lists(items, scores, [np.array([3]), np.array([1, 2, 3, 4])], 10, 3, source="test")
    np.testing.assert_array_equal(out, [[5, 7, 2], [0, 0, 0]])
    np.testing.assert_array_equal(values[0], [9, 5, 4])
    assert np.isneginf(values[1]).all()


@pytest.mark.parametrize("items, scores, needle", [
    (np.array([[1, 12]]), np.array([[2.0, 1.0]]), "listed item 12 for user 7"),
    (np.array([[1, 2]]), np.array([[1.0, 2.0]]), "rising scores for user 7"),
    (np.array([[1, 2]]), np.array([[1.0, np.nan]]), "NaN score for user 7"),
    (np.array([1, 2]), np.array([1.0, 2.0]), "shape [1, L]"),
    (np.array([[1.0, 2.0]]), np.array([[2.0, 1.0]]), "integer item ids"),
])  # fmt: skip
def test_bad_lists_are_one_line_errors(items, scores, needle):
    with pytest.raises(HarnessError) as excinfo:
        mask_lists(items, scores, [np.array([3])], 10, 2, source="Fam.recommend", row_ids=[7])
    assert needle in str(excinfo.value) and "Fam.recommend" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_a_list_family_refuses_sampled_metrics_and_warns_about_short_lists(rec_dataset, tmp_path):
    train, valid = rec_dataset.train.iloc[:90], rec_dataset.train.iloc[90:]
    with pytest.raises(HarnessError, match="_full metrics only"):
        FixedLists().fit(train, valid, _context(rec_dataset, tmp_path, "ndcg@10_sampled"))
    short = FixedLists()
    short.list_length = 10
    with pytest.warns(UserWarning, match="lists 10 items per user: a metric@K with K > 10"):
        short.fit(train, valid, _context(rec_dataset, tmp_path))
    assert short.predict(valid).items.shape == (len(valid), 10)
    report = TASK.report(rec_dataset, valid, short.predict(valid))
    assert "ndcg@10_full" in report and not any(key.endswith("_sampled") for key in report)
    assert isinstance(pd.DataFrame(report, index=[0]), pd.DataFrame)

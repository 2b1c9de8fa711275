import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.errors import HarnessError
from harness.metrics import get_metric, ndcg_at_k, target_ranks
from harness.ranking import Recommendations, SampledProtocol, fuse, item_counts, top_n
from harness.recommender import pad_left, training_sequences
from harness.tasks import TaskType, get_task_adapter


def test_top_n_masks_padding_and_history_and_matches_a_sort():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((7, 30)).astype(np.float32)
    histories = [rng.choice(np.arange(1, 30), size=rng.integers(0, 10), replace=False) for _ in range(7)]
    items, values = top_n(lambda rows: torch.from_numpy(scores[rows]), histories, 30, n=5, max_elements=60)
    for row in range(7):
        masked = scores[row].copy()
        masked[0] = -np.inf
        masked[histories[row]] = -np.inf
        assert items[row].tolist() == np.argsort(-masked, kind="stable")[:5].tolist()
        np.testing.assert_allclose(values[row], masked[items[row]])


def test_top_n_pads_rows_whose_unmasked_catalogue_is_short():
    items, _ = top_n(lambda rows: torch.ones(len(rows), 5), [np.array([1, 2, 3])], 5, n=3)
    assert items.tolist() == [[4, 0, 0]]


def test_full_ranking_through_the_adapter_agrees_with_recbole_full_sort(rec_dataset):
    """Hand-worked: 5 items, history {2}; scores of items 1..4 are 0.1, 0.9, 0.8, 0.7, target 4."""
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.8, 0.7]])
    part = pd.DataFrame({"user_id": [1], "history": [np.array([2])], "target": [4]})
    items, values = top_n(lambda rows: scores[rows], part["history"].tolist(), 5, n=4)
    assert items.tolist() == [[3, 4, 1, 0]]  # item 2 masked, padding last
    dataset = dataclasses.replace(rec_dataset, meta={**rec_dataset.meta, "n_items": 5})
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    prediction = Recommendations(items, values)
    # RecBole: rank 1 (0-based) once item 2 is masked -> NDCG@2 = 1/log2(3), MRR@2 = 1/2, Hit@1 = 0
    assert adapter.score(get_metric("ndcg@2_full"), dataset, part, prediction) == pytest.approx(1 / math.log2(3))
    assert adapter.score(get_metric("mrr@2"), dataset, part, prediction) == pytest.approx(0.5)
    assert adapter.score(get_metric("hit@1"), dataset, part, prediction) == 0.0
    assert target_ranks(scores, [4], [np.array([0, 2])]).tolist() == [1]


def test_sampled_candidates_are_per_user_reproducible_and_valid(rec_dataset):
    protocol = SampledProtocol.from_dataset(rec_dataset)
    part = rec_dataset.train
    full = protocol.candidates(part)
    subset = protocol.candidates(part.iloc[::-3])
    np.testing.assert_array_equal(subset, full[::-3])  # independent of which rows are asked together
    assert (full[:, 0] == part["target"].to_numpy()).all()
    for row, history in zip(full, part["history"]):
        negatives = row[1:]
        assert len(negatives) == 100 and (negatives != 0).all() and (negatives != row[0]).all()
        assert not np.isin(negatives, history).any()
    popular = SampledProtocol.from_dataset(dataclasses.replace(
        rec_dataset, meta={**rec_dataset.meta, "negative_sampling": "popularity", "sampled_negatives": 20}))  # fmt: skip
    drawn = popular.candidates(part)[:, 1:]
    assert drawn.shape == (len(part), 20)
    never_seen = np.flatnonzero(popular.popularity == 0)
    assert not np.isin(drawn, never_seen).any()
    with pytest.raises(HarnessError, match="negative_sampling must be"):
        SampledProtocol.from_dataset(dataclasses.replace(rec_dataset, meta={**rec_dataset.meta, "negative_sampling": "hard"}))


def test_sampled_ranks_are_pessimistic_on_ties(rec_dataset):
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    part = rec_dataset.train.iloc[:2]
    prediction = Recommendations(np.ones((2, 3), np.int64), np.zeros((2, 3)), np.array([[1.0, 2.0, 1.0, 0.0],
                                                                                     [1.0, 0.0, 0.0, 0.0]]))
    assert adapter.ranks("sampled", part, prediction).tolist() == [2, 0]


def test_fuse_mean_and_rrf_hand_worked():
    a = Recommendations([[1, 2, 3]], [[3.0, 2.0, 1.0]], [[1.0, 0.0]])
    b = Recommendations([[2, 4, 1]], [[5.0, 4.0, 3.0]], [[0.0, 1.0]])
    mean = fuse([a, b], n=4)
    # item 1: (3+3)/2, item 2: (2+5)/2, item 3: (1+3)/2 (floor of b), item 4: (1+4)/2 (floor of a)
    assert mean.items.tolist() == [[2, 1, 4, 3]]
    np.testing.assert_allclose(mean.scores, [[3.5, 3.0, 2.5, 2.0]])
    np.testing.assert_allclose(mean.sampled, [[0.5, 0.5]])
    rrf = fuse([a, b], method="rrf", n=2)
    assert rrf.items.tolist() == [[2, 1]]  # item 2: 1/62 + 1/61 beats item 1: 1/61 + 1/63
    with pytest.raises(ValueError, match="method must be"):
        fuse([a], method="vote")


def test_assemble_puts_fold_predictions_back_in_row_order():
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    first = Recommendations([[1, 2], [3, 4]], [[2.0, 1.0], [2.0, 1.0]])
    second = Recommendations([[5, 6]], [[2.0, 1.0]])
    oof = adapter.assemble(3, [(np.array([0, 2]), first), (np.array([1]), second)])
    assert oof.items.tolist() == [[1, 2], [5, 6], [3, 4]]
    with pytest.raises(ValueError, match="exactly once"):
        adapter.assemble(3, [(np.array([0, 0]), first), (np.array([1]), second)])


def test_submission_uses_raw_ids(rec_dataset):
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    prediction = Recommendations([[3, 1, 0]], [[2.0, 1.0, -np.inf]])
    submission = adapter.submission(rec_dataset, pd.Series(["7"]), prediction)
    assert submission.to_dict("records") == [{"user_id": 1007, "items": "30 10"}]


def test_training_sequences_never_hold_validation_or_test_targets(rec_dataset):
    train, valid = rec_dataset.train.iloc[:80], rec_dataset.train.iloc[80:]
    sequences = training_sequences(train, valid)
    for user, history, target in zip(valid["user_id"], valid["history"], valid["target"]):
        assert sequences[user].tolist() == list(history)  # the validation item is not there
    test_item = dict(zip(rec_dataset.test["user_id"], rec_dataset.test["target"]))
    for user, sequence in sequences.items():
        assert len(sequence) < len(rec_dataset.test.loc[rec_dataset.test["user_id"] == user, "history"].iloc[0]) + 1
        assert sequence[-1] != test_item[user] or test_item[user] in sequence[:-1]
    with pytest.raises(HarnessError, match="in both the training and the validation rows"):
        training_sequences(train, train.iloc[:3])


def test_check_folds_detects_a_leaking_split(rec_dataset):
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    adapter.check_folds(rec_dataset, None)
    test = rec_dataset.test.copy()
    test.at[3, "history"] = np.append(rec_dataset.train.at[3, "history"], 99)  # not the validation item
    with pytest.raises(HarnessError, match="user 4's test history is not their training history"):
        adapter.check_folds(dataclasses.replace(rec_dataset, test=test), None)


def test_baseline_is_most_popular_unseen(rec_dataset):
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    train, valid = rec_dataset.train.iloc[:80], rec_dataset.train.iloc[80:]
    baseline = adapter.baseline(rec_dataset, train, valid)
    counts = item_counts(training_sequences(train, valid), rec_dataset.meta["n_items"])
    for items, history in zip(baseline.items, valid["history"]):
        assert not np.isin(items, history).any()
        assert (np.diff(counts[items]) <= 0).all()
    assert 0 <= ndcg_at_k(adapter.ranks("full", valid, baseline), 10) < 0.5


def test_pad_left_right_aligns_the_most_recent_items():
    assert pad_left([np.array([1, 2, 3]), np.array([], np.int64)], 2).tolist() == [[2, 3], [0, 0]]


def test_fuse_normalise_puts_models_on_one_scale():
    counts = Recommendations([[1, 2, 3]], [[900.0, 500.0, 100.0]], [[900.0, 100.0]])  # e.g. popularity counts
    logits = Recommendations([[3, 2, 1]], [[2.0, 1.5, 1.0]], [[1.0, 2.0]])
    raw = fuse([counts, logits], n=3)
    assert raw.items[0, 0] == 1  # the counts' scale decides alone
    scaled = fuse([counts, logits], n=3, normalise=True)
    # min-max per row: counts 1, 0.5, 0 and logits 1, 0.5, 0 reversed -> every item 0.5
    np.testing.assert_allclose(scaled.scores, [[0.5, 0.5, 0.5]])
    assert scaled.items.tolist() == [[1, 2, 3]]  # ties broken by item id
    np.testing.assert_allclose(scaled.sampled, [[0.5, 0.5]])

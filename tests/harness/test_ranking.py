import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.errors import HarnessError
from harness.metrics import UNRANKED, get_metric, ndcg_at_k, ranks_from_topn, target_ranks
from harness.tasks.recommendation import (Recommendations, SampledProtocol, full_ranking, fuse, item_counts, pad_left,
                                          training_sequences)
from harness.tasks import TaskType, get_task_adapter


def test_top_n_masks_padding_and_history_and_matches_a_sort():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((7, 30)).astype(np.float32)
    histories = [rng.choice(np.arange(1, 30), size=rng.integers(0, 10), replace=False) for _ in range(7)]
    ranking = full_ranking(lambda rows: torch.from_numpy(scores[rows]), histories, 30, n=5, max_elements=60)
    items, values = ranking.items, ranking.scores
    for row in range(7):
        masked = scores[row].copy()
        masked[0] = -np.inf
        masked[histories[row]] = -np.inf
        assert items[row].tolist() == np.argsort(-masked, kind="stable")[:5].tolist()
        np.testing.assert_allclose(values[row], masked[items[row]])


def test_top_n_pads_rows_whose_unmasked_catalogue_is_short():
    scores = torch.tensor([0.0, 0.0, 0.0, -torch.inf, 0.0])
    ranking = full_ranking(lambda rows: scores.expand(len(rows), -1), [np.array([1, 2])], 5, n=3)
    assert ranking.items.tolist() == [[4, 0, 0]]  # 3 scores -inf: masked by the model


def test_full_ranking_through_the_adapter_agrees_with_recbole_full_sort(rec_dataset):
    """Hand-worked: 5 items, history {2}; scores of items 1..4 are 0.1, 0.9, 0.8, 0.7, target 4."""
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.8, 0.7]])
    part = pd.DataFrame({"user_id": [1], "history": [np.array([2])], "target": [4]})
    ranking = full_ranking(lambda rows: scores[rows], part["history"].tolist(), 5, n=4, targets=part["target"])
    items, values = ranking.items, ranking.scores
    assert items.tolist() == [[3, 4, 1, 0]] and ranking.ranks.tolist() == [1]  # item 2 masked, padding last
    dataset = dataclasses.replace(rec_dataset, meta={**rec_dataset.meta, "n_items": 5})
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    prediction = Recommendations(items, values)  # the list alone: ranks read off it
    # RecBole: rank 1 (0-based) once item 2 is masked -> NDCG@2 = 1/log2(3), MRR@2 = 1/2, Hit@1 = 0
    assert adapter.score(get_metric("ndcg@2_full"), dataset, part, prediction) == pytest.approx(1 / math.log2(3))
    assert adapter.score(get_metric("mrr@2"), dataset, part, prediction) == pytest.approx(0.5)
    assert adapter.score(get_metric("hit@1"), dataset, part, prediction) == 0.0
    assert target_ranks(scores, [4], [np.array([0, 2])]).tolist() == [1]
    assert adapter.score(get_metric("mrr@2"), dataset, part, Recommendations(items, values, ranks=ranking.ranks)) == 0.5


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


# ---- one tie convention on every ranking path ----------------------------------------------------


def _tied_case(seed, n_rows=25, n_items=40):
    """Integer scores (many ties), histories without padding, and a few rows with -inf / +inf scores."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(n_rows, n_items)).astype(np.float32)
    scores[3, rng.choice(np.arange(1, n_items), 6, replace=False)] = np.inf
    scores[4, rng.choice(np.arange(1, n_items), 30, replace=False)] = -np.inf
    scores[5] = 1.0  # a constant model
    histories = [rng.choice(np.arange(1, n_items), size=rng.integers(0, 8), replace=False) for _ in range(n_rows)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, n_items), h)) for h in histories])
    scores[6, targets[6]] = -np.inf  # a target the model masks
    histories[7] = np.append(histories[7], targets[7])  # a target inside the history
    return scores, histories, targets


def _reference_ranks(scores, histories, targets):
    """Pessimistic ranks by the definition: candidates are every item but 0 and the history."""
    out = []
    for row, (history, target) in enumerate(zip(histories, targets)):
        if target in history or scores[row, target] == -np.inf:
            out.append(UNRANKED)
            continue
        candidates = np.setdiff1d(np.arange(1, scores.shape[1]), np.append(history, target))
        out.append(int((scores[row, candidates] >= scores[row, target]).sum()))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_full_ranking_path_gives_the_same_pessimistic_ranks(seed):
    scores, histories, targets = _tied_case(seed)
    expected = _reference_ranks(scores, histories, targets)
    assert expected[5] == scores.shape[1] - 2 - len(histories[5])  # the constant model ranks last
    assert expected[6] == expected[7] == UNRANKED  # a target the model masks, a target in the history
    score_fn = lambda rows: torch.from_numpy(scores[rows])  # noqa: E731
    for max_elements, n in ((40, 5), (400, 10), (10_000, 39)):  # batch size and list length change nothing
        ranking = full_ranking(score_fn, histories, 40, targets=targets, n=n, max_elements=max_elements)
        np.testing.assert_array_equal(ranking.ranks, expected)
        # ranks read off the list and its scores agree with the counted ones for every K < N
        listed = ranks_from_topn(ranking.items, targets, ranking.scores)
        for k in range(1, ranking.items.shape[1]):
            np.testing.assert_array_equal(listed < k, expected < k)
    with_padding = [np.append(h, 0) for h in histories]  # the metric engine's own entry point
    np.testing.assert_array_equal(target_ranks(scores, targets, with_padding), expected)
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    rows = pd.DataFrame({"user_id": np.arange(len(targets)), "history": histories, "target": targets})
    ranking = full_ranking(score_fn, histories, 40, targets=targets, n=10)
    for prediction in (Recommendations(ranking.items, ranking.scores, ranks=ranking.ranks),
                       Recommendations(ranking.items, ranking.scores)):  # fmt: skip
        for k in (1, 3, 9):
            np.testing.assert_array_equal(adapter.ranks("full", rows, prediction) < k, expected < k)


def test_top_n_lists_break_ties_by_lower_item_id_whatever_the_length():
    scores, histories, _ = _tied_case(2)
    long = full_ranking(lambda rows: torch.from_numpy(scores[rows]), histories, 40, n=20)
    for n in (1, 4, 9):
        short = full_ranking(lambda rows: torch.from_numpy(scores[rows]), histories, 40, n=n, max_elements=80)
        np.testing.assert_array_equal(short.items, long.items[:, :n])
    for row, history in enumerate(histories):
        masked = scores[row].astype(np.float64)
        masked[np.append(history, 0)] = -np.inf
        order = np.lexsort((np.arange(40), -masked))  # score descending, then item id ascending
        expected = np.where(masked[order[:20]] == -np.inf, 0, order[:20])
        np.testing.assert_array_equal(long.items[row], expected)
    n_top = int(np.isposinf(np.delete(scores[3], histories[3])).sum())
    assert np.isposinf(long.scores[3, :n_top]).all() and (long.items[3, :n_top] != 0).all()  # +inf is listed
    assert (long.items[4, long.scores[4] == -np.inf] == 0).all()  # -inf: masked by the model, never listed


def test_sampled_protocol_follows_the_same_convention():
    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    rows = pd.DataFrame({"user_id": [1, 2, 3], "history": [np.array([5]), np.array([7]), np.array([2])],
                         "target": [3, 4, 2]})  # fmt: skip
    sampled = np.array([[1.0, 1.0, 0.0, 1.0], [np.inf, np.inf, 0.0, -np.inf], [9.0, 0.0, 0.0, 0.0],
                        [-np.inf, 0.0, 0.0, 0.0]])  # fmt: skip
    rows = pd.concat([rows, rows.iloc[:1]], ignore_index=True)
    prediction = Recommendations(np.zeros((4, 0), np.int64), np.zeros((4, 0)), sampled)
    # ties count against the target; row 3's target is in its history, row 4's is masked by the model
    assert adapter.ranks("sampled", rows, prediction).tolist() == [2, 1, UNRANKED, UNRANKED]
    with pytest.raises(HarnessError, match="sampled-candidate scores contain NaN"):
        adapter.ranks("sampled", rows, Recommendations(prediction.items, prediction.scores, sampled * np.nan))


def test_bad_scores_and_history_ids_are_refused_with_one_line_errors():
    ones = lambda rows: torch.ones(len(rows), 6)  # noqa: E731
    nan_at_user_8 = lambda rows: torch.where(torch.arange(6) == 4, torch.nan, 1.0).expand(len(rows), -1)  # noqa: E731
    with pytest.raises(HarnessError, match=r"Toy.score returned 2 NaN scores \(first: user 7, item 4\)"):
        full_ranking(nan_at_user_8, [np.array([1]), np.array([2])], 6, row_ids=[7, 8], source="Toy.score")
    with pytest.raises(HarnessError, match=r"Toy.score returned .* NaN"):  # the rank-only path checks too
        full_ranking(nan_at_user_8, [np.array([1])], 6, targets=[2], n=0, source="Toy.score")
    for bad in (-1, 0, 6):
        with pytest.raises(HarnessError, match=rf"1 history item ids are outside \[1, 6\) \(first: row 1, id {bad}\)"):
            full_ranking(ones, [np.array([1]), np.array([2, bad])], 6)
    with pytest.raises(HarnessError, match=r"1 target item ids are outside \[1, 6\) \(first: user 9, id 6\)"):
        full_ranking(ones, [np.array([1])], 6, targets=[6], row_ids=[9])
    with pytest.raises(ValueError, match="scores contains NaN"):
        ranks_from_topn([[1, 2]], [1], [[np.nan, 1.0]])

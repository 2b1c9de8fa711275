"""The re-ID task: per-fold galleries, identity folds, blends, submissions, P x K batches, the shared MoE pieces."""

import numpy as np
import pandas as pd
import pytest
import torch

from harness.data import Dataset
from harness.errors import HarnessError
from harness.folds import make_folds
from harness.metrics import get_metric, reid_metrics
from harness.tasks import TaskType, get_task_adapter
from harness.tasks.reid import PKSampler, ReIDEmbeddings, concatenate, roles

TASK = get_task_adapter(TaskType.REID)


def _rows(n_ids=12, cams=3, per_cam=2, seed=0, first_pid=1):
    rng = np.random.default_rng(seed)
    rows = [(f"img_{p:03d}_{c}_{i}.jpg", p, c) for p in range(first_pid, first_pid + n_ids) for c in range(cams)
            for i in range(per_cam)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["id", "pid", "camid"]).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    latent = rng.standard_normal((first_pid + n_ids, 16))
    features = latent[frame["pid"]] + 0.8 * rng.standard_normal((len(frame), 16))
    return frame, features


def _dataset(train, test=None):
    if test is None:
        test, _ = _rows(n_ids=6, first_pid=100)
        test = test.assign(is_query=False, is_gallery=True)
    return Dataset("tiny_reid", TaskType.REID, train, test, id_col="id", target_col="pid", root=".", group_col="pid",
                   meta={"modalities": ("rgb",)})  # fmt: skip


def test_validation_rows_are_scored_as_query_and_gallery_split_by_camera():
    frame, features = _rows()
    is_query, is_gallery = roles(frame)
    assert (is_query ^ is_gallery).all() and is_query.sum() == 12 * 3  # one query per identity and camera
    q, g = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    expected = reid_metrics(features[q], frame.pid[q], frame.camid[q], features[g], frame.pid[g], frame.camid[g],
                            metric="cosine")  # fmt: skip
    result = TASK.metrics(frame, ReIDEmbeddings(features, np.zeros(len(frame))))
    assert result["map"] == pytest.approx(expected["map"]) and result["n_queries"] == expected["n_queries"]


def test_out_of_fold_rows_are_scored_fold_model_by_fold_model():
    frame, features = _rows(n_ids=20)
    fold = (frame["pid"] % 2).to_numpy()
    parts = [(np.flatnonzero(fold == k), ReIDEmbeddings(features[fold == k] * (k + 1), np.zeros((fold == k).sum())))
             for k in (0, 1)]  # fmt: skip
    oof = TASK.assemble(len(frame), parts)
    assert set(oof.space) == {0, 1}
    by_fold = [TASK.metrics(frame[fold == k].reset_index(drop=True), parts[k][1]) for k in (0, 1)]
    n = [r["n_queries"] for r in by_fold]
    combined = TASK.metrics(frame, oof)
    assert combined["map"] == pytest.approx((by_fold[0]["map"] * n[0] + by_fold[1]["map"] * n[1]) / sum(n))
    # A fold model's rows are never compared with another's: scrambling the other space changes nothing.
    scrambled = ReIDEmbeddings(np.where((fold == 1)[:, None], np.random.default_rng(1).standard_normal(features.shape),
                                        oof.features), oof.space)  # fmt: skip
    assert TASK.metrics(frame[fold == 0].reset_index(drop=True), scrambled.take(fold == 0))["map"] == by_fold[0]["map"]


def test_blend_of_embeddings_is_the_weighted_mean_of_cosine_distances():
    frame, features = _rows()
    rng = np.random.default_rng(3)
    a = ReIDEmbeddings(features, np.zeros(len(frame)))
    b = ReIDEmbeddings(features[:, :8] + rng.standard_normal((len(frame), 8)), np.zeros(len(frame)))
    blend = concatenate([a, b], [0.7, 0.3])
    distance = lambda e: 1 - e.normalised() @ e.normalised().T  # noqa: E731
    np.testing.assert_allclose(distance(blend), 0.7 * distance(a) + 0.3 * distance(b), atol=1e-5)
    oof, test, weights = TASK.blend("weighted_mean", [a, b], [a, b], weights=[7, 3])
    assert weights == pytest.approx([0.7, 0.3]) and oof.features.shape[1] == 24
    with pytest.raises(HarnessError, match="mean or weighted_mean"):
        TASK.blend("stacking", [a, b], [a, b])


def test_predictions_round_trip_through_parquet_columns(tmp_path):
    frame, features = _rows()
    predictions = ReIDEmbeddings(features, np.arange(len(frame)) % 3)
    path = tmp_path / "oof.parquet"
    TASK.to_frame(frame["id"], predictions).to_parquet(path)
    back = TASK.from_frame(pd.read_parquet(path))
    np.testing.assert_array_equal(back.features, predictions.features)
    np.testing.assert_array_equal(back.space, predictions.space)


def test_submission_lists_each_querys_hundred_nearest_gallery_images():
    test, features = _rows(n_ids=60, cams=2)
    test = test.assign(is_query=test.index % 4 == 0, is_gallery=test.index % 4 != 0)
    dataset = _dataset(test.copy(), test)
    submission = TASK.submission(dataset, test["id"], ReIDEmbeddings(features, np.zeros(len(test))))
    assert list(submission.columns) == ["id", "gallery"] and len(submission) == test.is_query.sum()
    first = submission["gallery"].iloc[0].split()
    assert len(first) == 100 and set(first) <= set(test.id[test.is_gallery])
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    q = np.flatnonzero(test.is_query)[0]
    g = np.flatnonzero(test.is_gallery)
    assert first[0] == test.id[g[np.argmax(unit[g] @ unit[q])]]


def test_identity_folds_are_checked():
    frame, _ = _rows(n_ids=9)
    dataset = _dataset(frame)
    folds = make_folds(dataset, "group", 3, seed=0)
    TASK.check_folds(dataset, folds)
    leaky = make_folds(dataset, "kfold", 3, seed=0)
    with pytest.raises(HarnessError, match="identity .* is in folds .*fold_scheme=group"):
        TASK.check_folds(dataset, leaky)
    one_camera = frame.assign(camid=0)
    with pytest.raises(HarnessError, match="validation fold 0 has no query"):
        TASK.check_folds(_dataset(one_camera), folds)
    with pytest.raises(HarnessError, match="--folds 10 is more than the 9 groups .'pid' values. of 'tiny_reid'"):
        make_folds(dataset, "group", 10, seed=0)


def test_rerank_metric_names_score_the_re_ranked_distances():
    frame, features = _rows(n_ids=15)
    predictions = ReIDEmbeddings(features, np.zeros(len(frame)))
    plain, reranked = TASK.score(get_metric("map"), None, frame, predictions), TASK.score(get_metric("map_rerank"), None, frame, predictions)
    assert 0 < plain < 1 and 0 < reranked < 1 and plain != reranked
    assert get_metric("rank1_rerank").greater_is_better and get_metric("cmc@5_rerank").task == "reid"


def test_pk_sampler_batches_distinct_identities_k_images_each_deterministically():
    labels = np.repeat(np.arange(10), [2, 4, 4, 5, 6, 8, 3, 4, 4, 9])
    sampler = PKSampler(labels, batch_size=16, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sum(max(1, n // 4) for n in np.bincount(labels)) // 4
    for batch in batches:
        ids = labels[batch]
        assert len(batch) == 16 and len(set(ids)) == 4 and all((ids == i).sum() == 4 for i in set(ids))
    assert batches == list(PKSampler(labels, batch_size=16, k=4, seed=0))
    assert list(sampler) != batches  # the next epoch draws new batches
    with pytest.raises(HarnessError, match="multiple of model.instances_per_id"):
        PKSampler(labels, batch_size=10, k=4, seed=0)
    with pytest.raises(HarnessError, match="at least 16 training identities; this fold has 10"):
        PKSampler(labels, batch_size=64, k=4, seed=0)


def test_expert_bank_equals_the_per_expert_loop_forward_and_backward():
    from models.moe import ExpertBank, MLPGate, usage_variance_loss

    torch.manual_seed(0)
    bank = ExpertBank(3, 12, 8, dropout=0.0)
    x = torch.randn(3, 5, 12, requires_grad=True)
    fused, loop = bank(x), bank.forward_loop(x)
    torch.testing.assert_close(fused, loop)
    grads = [torch.autograd.grad(out.square().sum(), [x, *bank.parameters()]) for out in (fused, loop)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"inputs \[3, ..., 12\]"):
        bank(torch.randn(2, 5, 12))
    gate = MLPGate(12, 3, temperature=0.5, depth=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in gate.modules()) == 3
    weights = gate(torch.randn(6, 12), mask=torch.tensor([[True, False, True]] * 6)).weights
    assert (weights[:, 1] == 0).all() and torch.allclose(weights.sum(1), torch.ones(6))
    assert usage_variance_loss(torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(1 / 3)
    assert usage_variance_loss(torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0)

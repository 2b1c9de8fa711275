"""The retrieval task: metrics against a brute-force reference, per-fold galleries, blends, submissions."""


import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.metrics import get_metric, retrieval_metrics
from harness.tasks import TaskType, get_task_adapter
from harness.tasks.retrieval import Embeddings, concatenate


def _brute_force(image, text, owner, k):
    """Recall@k both ways by sorting full similarity matrices, ties against the target."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = unit(image) @ unit(text).T
    i2t = np.mean([(sim[i, owner != i] >= sim[i, owner == i].max()).sum() < k for i in range(len(image))])
    t2i = np.mean([(np.delete(sim[:, t], owner[t]) >= sim[owner[t], t]).sum() < k for t in range(len(text))])
    return i2t, t2i


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_metrics_match_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((40, 8))
    owner = np.repeat(np.arange(40), 5)
    text = image[owner] + 1.5 * rng.standard_normal((200, 8))
    result = retrieval_metrics(image, text, owner, batch_size=7)
    for k in (1, 5, 10):
        i2t, t2i = _brute_force(image, text, owner, k)
        assert result[f"i2t_r@{k}"] == pytest.approx(i2t) and result[f"t2i_r@{k}"] == pytest.approx(t2i)
    assert result["rsum"] == pytest.approx(sum(result[f"{w}_r@{k}"] for w in ("i2t", "t2i") for k in (1, 5, 10)))
    assert 0 < result["rsum"] < 6 and result["n_texts"] == 200


def test_constant_embeddings_score_worst_and_perfect_ones_best():
    owner = np.repeat(np.arange(20), 5)
    constant = retrieval_metrics(np.ones((20, 4)), np.ones((100, 4)), owner)
    assert constant["i2t_r@1"] == 0 and constant["t2i_r@10"] == 0  # ties count against the target
    perfect = retrieval_metrics(np.eye(20), np.eye(20)[owner], owner)
    assert perfect["rsum"] == pytest.approx(6.0) and perfect["i2t_map"] == pytest.approx(1.0)


def _dataset(n_images=30, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"img{i}.jpg" for i in range(n_images)]
    frame = pd.DataFrame({"id": ids, "captions": [[f"caption {i} {k}" for k in range(5)] for i in range(n_images)],
                          "caption_ids": [[f"{name}#{k}" for k in range(5)] for name in ids]})  # fmt: skip
    from harness.data import Dataset

    dataset = Dataset(name="tiny_retrieval", task=TaskType.RETRIEVAL, train=frame, test=frame, id_col="id",
                      target_col="captions", root=".")  # fmt: skip
    latent = rng.standard_normal((n_images, 16))
    texts = [latent[i] + 0.3 * rng.standard_normal((5, 16)) for i in range(n_images)]
    return dataset, frame, Embeddings.from_lists(latent, texts)


def test_out_of_fold_rows_are_scored_within_their_own_fold_model_space():
    dataset, frame, good = _dataset()
    adapter = get_task_adapter(TaskType.RETRIEVAL)
    halves = [np.arange(15), np.arange(15, 30)]
    # the second fold model embeds in a rotated space: scored together, its captions would match nothing
    rotation = np.linalg.qr(np.random.default_rng(3).standard_normal((16, 16)))[0]
    second = good.take(halves[1])
    second = Embeddings(second.image @ rotation, second.text @ rotation, second.text_mask, second.space)
    oof = adapter.assemble(30, [(halves[0], good.take(halves[0])), (halves[1], second)])
    assert oof.space.tolist() == [0] * 15 + [1] * 15
    per_fold = [adapter.score(get_metric("rsum"), dataset, frame.iloc[h], p)
                for h, p in zip(halves, (good.take(halves[0]), second))]  # fmt: skip
    assert adapter.score(get_metric("rsum"), dataset, frame, oof) == pytest.approx(np.mean(per_fold))
    baseline = adapter.score(get_metric("rsum"), dataset, frame, adapter.baseline(dataset, frame, frame))
    assert adapter.score(get_metric("rsum"), dataset, frame, oof) > baseline + 1.5


def test_blends_average_similarities_and_round_trip_through_parquet_columns(tmp_path):
    dataset, frame, a = _dataset(seed=0)
    _, _, b = _dataset(seed=1)
    blended = concatenate([a, b], [0.25, 0.75])
    na, nb = a.normalised(), b.normalised()
    expected = 0.25 * (na.image @ na.text[3].T) + 0.75 * (nb.image @ nb.text[3].T)
    assert np.allclose(blended.image @ blended.text[3].T, expected, atol=1e-6)
    adapter = get_task_adapter(TaskType.RETRIEVAL)
    path = tmp_path / "p.parquet"
    adapter.to_frame(frame["id"], blended, "fold_0").to_parquet(path)
    back = adapter.from_frame(pd.read_parquet(path), "fold_0")
    assert np.allclose(back.image, blended.image) and np.allclose(back.text, blended.text)
    with pytest.raises(HarnessError, match="mean or weighted_mean"):
        adapter.blend("stacking", [a, b], [a, b])


def test_submission_lists_each_images_ten_most_similar_captions():
    dataset, frame, good = _dataset()
    submission = get_task_adapter(TaskType.RETRIEVAL).submission(dataset, frame["id"], good)
    assert list(submission.columns) == ["id", "captions"] and len(submission) == 30
    listed = submission["captions"].str.split()
    assert all(len(row) == 10 for row in listed)
    assert np.mean([row[0].split("#")[0] == image for row, image in zip(listed, frame["id"])]) > 0.9


def test_embeddings_refuse_nan():
    with pytest.raises(HarnessError, match="NaN"):
        Embeddings.from_lists(np.full((2, 3), np.nan), [np.ones((1, 3)), np.ones((1, 3))])

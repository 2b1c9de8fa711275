import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_squared_log_error

from harness.metrics import get_metric
from harness.tasks import TaskType, get_task_adapter


def test_regression_adapter_scores_averages_and_writes_the_submission(regression_dataset):
    adapter = get_task_adapter(TaskType.REGRESSION)
    train, valid = regression_dataset.train.iloc[:40], regression_dataset.train.iloc[40:]
    prediction = valid["y"].to_numpy() * 1.1
    assert adapter.score(get_metric("msle"), regression_dataset, valid, prediction) == pytest.approx(
        mean_squared_log_error(valid["y"], prediction)
    )
    baseline = adapter.baseline(regression_dataset, train, valid)
    assert np.allclose(baseline, np.expm1(np.log1p(train["y"]).mean()))  # the MSLE-optimal constant
    assert np.allclose(adapter.average([np.ones(3), 3 * np.ones(3)]), 2.0)
    submission = adapter.submission(regression_dataset, pd.Series(["a", "b"]), np.array([1.0, 2.0]))
    assert list(submission.columns) == ["id", "y"] and submission["y"].tolist() == [1.0, 2.0]


def test_classification_adapter_uses_probabilities(regression_dataset):
    labels = np.array([0, 1, 2, 1, 1, 0])
    frame = pd.DataFrame({"id": list("abcdef"), "label": labels})
    dataset = dataclasses.replace(
        regression_dataset, task=TaskType.CLASSIFICATION, train=frame, target_col="label",
        meta={"n_classes": 3, "classes": ["cat", "dog", "bird"]},
    )  # fmt: skip
    adapter = get_task_adapter(TaskType.CLASSIFICATION)
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    assert adapter.score(get_metric("accuracy"), dataset, frame, proba) == accuracy_score(labels, proba.argmax(1))
    assert np.allclose(adapter.baseline(dataset, frame, frame[:2]), [[2 / 6, 3 / 6, 1 / 6]] * 2)
    frame_out = adapter.to_frame(frame["id"], proba)
    assert list(frame_out.columns) == ["id", "prediction_0", "prediction_1", "prediction_2"]
    assert adapter.submission(dataset, frame["id"], proba)["label"].tolist() == ["cat", "dog", "dog", "dog", "bird", "cat"]


@pytest.mark.parametrize("task", list(TaskType))
def test_every_task_type_has_an_adapter_with_the_whole_contract(task):
    adapter = get_task_adapter(task)
    methods = ("score", "report", "baseline", "check_folds", "assemble", "average", "take", "to_frame", "from_frame",
               "blend", "submission", "submission_keys", "read_submission", "check_submission_metric")  # fmt: skip
    assert all(callable(getattr(adapter, name, None)) for name in methods) and isinstance(adapter.fold_blendable, bool)


def _classification(regression_dataset, labels, n_classes=3):
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(labels))], "label": labels})
    return dataclasses.replace(
        regression_dataset, task=TaskType.CLASSIFICATION, train=frame, target_col="label",
        meta={"n_classes": n_classes, "classes": [f"c{c}" for c in range(n_classes)]},
    ), frame  # fmt: skip


def test_classification_report_matches_scikit_learn(regression_dataset):
    from sklearn.metrics import f1_score, log_loss, top_k_accuracy_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 200)
    dataset, frame = _classification(regression_dataset, labels, 8)
    proba = rng.dirichlet(np.ones(8), 200)
    report = get_task_adapter(TaskType.CLASSIFICATION).report(dataset, frame, proba)
    assert report["accuracy"] == pytest.approx(accuracy_score(labels, proba.argmax(1)))
    assert report["macro_f1"] == pytest.approx(f1_score(labels, proba.argmax(1), average="macro"))
    assert report["log_loss"] == pytest.approx(log_loss(labels, proba, labels=range(8)))
    assert report["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, proba, k=5, labels=range(8)))


def test_classification_blends_probabilities_and_stacks_with_a_classifier(regression_dataset):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    dataset, frame = _classification(regression_dataset, labels)
    truth = np.eye(3)[labels]
    members = [0.6 * truth + 0.4 * rng.dirichlet(np.ones(3), 300) for _ in range(2)]
    adapter, folds = get_task_adapter(TaskType.CLASSIFICATION), np.arange(300) % 3
    common = dict(dataset=dataset, rows=frame, metric=get_metric("log_loss"), folds=folds)
    oof, test, _ = adapter.blend("mean", members, members, **common)
    assert np.allclose(oof, (members[0] + members[1]) / 2) and np.allclose(test.sum(axis=1), 1)
    oof, test, _ = adapter.blend("median", members, members, **common)
    assert np.allclose(oof.sum(axis=1), 1)
    oof, test, weights = adapter.blend("stacking", members, members, **common)
    assert oof.shape == (300, 3) and np.allclose(oof.sum(axis=1), 1) and weights is None
    assert adapter.score(get_metric("accuracy"), dataset, frame, oof) > 0.9
    round_trip = adapter.from_frame(adapter.to_frame(frame["id"], members[0], "fold_0"), "fold_0")
    assert np.array_equal(round_trip, members[0])


def test_macro_f1_hand_worked():
    from harness.metrics import macro_f1

    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: predicted only -> 0
    assert macro_f1([0, 0, 1, 1], [0, 1, 1, 2]) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)

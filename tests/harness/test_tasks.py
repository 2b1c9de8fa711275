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


def test_tasks_without_an_adapter_say_so():
    with pytest.raises(NotImplementedError, match="reid"):
        get_task_adapter(TaskType.REID)

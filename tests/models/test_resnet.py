"""The ResNet baseline: small-image stem, the classification task end to end, blends."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from harness.config import TrainConfig
from harness.cv import make_run_config, run_cv
from harness.data import load_dataset
from harness.data.images import generate_cifar10
from harness.errors import HarnessError
from harness.metrics import get_metric
from harness.registry import FitContext, create_model
from models.resnet import ResNetConfig, SmallImageResNet


@pytest.mark.parametrize("depth, channels", [(18, 3), (50, 1)])
def test_small_image_stem_keeps_the_resolution_for_the_stages(depth, channels):
    network = SmallImageResNet(channels, 7, ResNetConfig(depth=depth, width=4))
    assert network.trunk.conv1.kernel_size == (3, 3)
    assert network.trunk.conv1.stride == (1, 1) and not any(isinstance(m, torch.nn.MaxPool2d) for m in network.modules())
    assert network(torch.randn(2, channels, 32, 32)).shape == (2, 7)
    features = network.trunk(torch.randn(1, channels, 32, 32))
    assert features.shape[-2:] == (4, 4)  # 32 / 2^3: three stride-2 stages after a stride-1 stem


@pytest.mark.parametrize("override, field", [({"depth": 20}, "depth"), ({"width": 0}, "width"),
                                             ({"dropout": 1.5}, "dropout"), ({"pretrained": "nope.pt"}, "pretrained")])
def test_bad_config_is_a_one_line_error(override, field):
    with pytest.raises(HarnessError, match=f"model.{field}") as error:
        create_model("resnet", override)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_cifar10(root / "cifar10", n_train=1000, n_test=100)
    return root


def _run(workdir, small_cifar, **model):
    shutil.copytree(small_cifar, workdir / "data", dirs_exist_ok=True)
    config = make_run_config("resnet", {
        "model": {"width": 8, **model}, "folds": 2, "threads_per_fold": 1,
        "train": {"epochs": 6, "batch_size": 64, "progress": False},
    })  # fmt: skip
    return run_cv(config, log=lambda message: None)


def test_resnet_beats_the_class_prior(workdir, small_cifar):
    first = _run(workdir, small_cifar)
    assert first["cv_accuracy_mean"] > 2 * first["baseline_accuracy_mean"], first
    assert {"oof_log_loss", "oof_macro_f1", "oof_top5_accuracy", "test_accuracy"} <= set(first)
    submission = pd.read_csv(first["submission"])
    assert list(submission.columns) == ["id", "label"] and len(submission) == 100
    assert not pd.api.types.is_integer_dtype(submission["label"])  # class names, not codes
    assert (workdir / first["run_dir"] / "confusion_matrix.png").exists()


def _fit_small(workdir, small_cifar):
    shutil.copytree(small_cifar, workdir / "data", dirs_exist_ok=True)
    dataset = load_dataset("cifar10", data_root=workdir / "data")
    family = create_model("resnet", {"width": 4})
    ctx = FitContext(dataset=dataset, metric=get_metric("accuracy"), train_config=TrainConfig(epochs=1, progress=False),
                     device="cpu", seed=0, fold=0, workdir=workdir / "fold", cache_dir=workdir / "cache",
                     log_metrics=lambda logs, step: None)  # fmt: skip
    family.fit(dataset.train.iloc[:200], dataset.train.iloc[200:300], ctx)
    return family, dataset


def test_same_seed_same_predictions_and_no_label_read(workdir, small_cifar, one_thread):
    family, dataset = _fit_small(workdir, small_cifar)
    again, _ = _fit_small(workdir, small_cifar)
    rows = dataset.test.iloc[:50]
    np.testing.assert_array_equal(family.predict(rows), again.predict(rows))  # augmentation included
    shuffled = rows.assign(label=np.random.default_rng(0).permutation(rows["label"].to_numpy()))
    np.testing.assert_array_equal(family.predict(rows), family.predict(shuffled))
    np.testing.assert_array_equal(family.predict(rows), family.predict(rows.drop(columns="label")))

import io
import math
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from harness.config import TrainConfig
from harness.io import load_checkpoint
from harness.metrics import get_metric
from harness.trainer import Trainer, warmup_cosine


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def forward(self, x):
        return self.layer(x).squeeze(-1)

    def training_step(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


def _data(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _fit(config, seed=0, evaluate=None):
    torch.manual_seed(seed)
    model = Linear()
    x, y = _data()
    xv, yv = _data(seed=1, n=64)
    mse = get_metric("mse")
    evaluate = evaluate or (lambda m: mse.fn(yv.numpy(), m(xv).numpy()))
    result = Trainer(config, mse, seed=seed).fit(model, TensorDataset(x, y), evaluate)
    return model, result


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    values = [warmup_cosine(step, total_steps=100, warmup_steps=10) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_loop_learns_a_linear_map():
    model, result = _fit(TrainConfig(epochs=30, batch_size=32, lr=0.05, progress=False))
    assert result.best_score < 0.05
    assert torch.allclose(model.layer.weight.detach(), torch.tensor([[1.0, -2.0, 0.5]]), atol=0.1)


def test_same_seed_gives_identical_weights():
    config = TrainConfig(epochs=3, batch_size=16, lr=0.01, progress=False)
    a, _ = _fit(config, seed=3)
    b, _ = _fit(config, seed=3)
    assert torch.equal(a.layer.weight, b.layer.weight)


def test_gradient_accumulation_equals_one_larger_batch():
    # 256 rows: batches of 16 accumulated 2 at a time see the same 32-row groups as batches of 32
    # (one permutation per epoch from the same generator); equal mean losses give equal steps.
    # 240 rows end with one 16-row pass: alone in its group, it must still make the same step.
    for n in (256, 240):
        x, y = _data(n=n)
        weights = []
        for batch_size, accumulate in ((32, 1), (16, 2)):
            torch.manual_seed(0)
            model = Linear()
            config = TrainConfig(epochs=2, batch_size=batch_size, grad_accumulation=accumulate, lr=0.05,
                                 grad_clip=0.0, progress=False)  # fmt: skip
            Trainer(config, get_metric("mse"), seed=0).fit(model, TensorDataset(x, y), lambda m: 0.0)
            weights.append(model.layer.weight.detach().clone())
        assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_early_stopping_restores_the_best_epoch():
    scores = iter([5.0, 3.0, 4.0, 4.5, 6.0, 7.0, 8.0])
    seen = []

    def evaluate(model):
        seen.append(model.layer.weight.detach().clone())
        return next(scores)

    model, result = _fit(TrainConfig(epochs=7, patience=2, lr=0.01, progress=False), evaluate=evaluate)
    assert result.best_epoch == 2 and result.best_score == 3.0  # epochs count from 1
    assert result.epochs_run == 4  # epochs 3 and 4 did not improve on epoch 2
    assert torch.equal(model.layer.weight, seen[1])
    assert [h["valid_mse"] for h in result.history] == [5.0, 3.0, 4.0, 4.5]


def test_direction_comes_from_the_metric():
    accuracy = get_metric("accuracy")
    model = Linear()
    x, y = _data()
    scores = iter([0.2, 0.9, 0.5])
    result = Trainer(TrainConfig(epochs=3, patience=5, progress=False), accuracy).fit(
        model, TensorDataset(x, y), lambda m: next(scores)
    )
    assert result.best_epoch == 2 and np.isclose(result.best_score, 0.9)


def test_checkpoints_and_callback_count_epochs_from_one(tmp_path):
    scores = iter([5.0, 3.0, 4.0, 4.5])
    logged = []
    model, x, y = Linear(), *_data()
    trainer = Trainer(TrainConfig(epochs=4, patience=5, progress=False), get_metric("mse"),
                      log_metrics=lambda logs, epoch: logged.append(epoch), workdir=tmp_path)  # fmt: skip
    result = trainer.fit(model, TensorDataset(x, y), lambda m: next(scores))

    assert logged == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == result.best_epoch == 2
    assert load_checkpoint(tmp_path / "final.pt")["epoch"] == result.epochs_run == 4


def test_progress_off_a_terminal_is_one_plain_line_per_epoch(capsys):
    _fit(TrainConfig(epochs=6, patience=10, batch_size=8, lr=0.01))
    err = capsys.readouterr().err

    assert "\r" not in err  # no carriage-return updates piling up in a log file
    lines = err.split("\n")[:-1]
    assert max(map(len, lines)) < 200
    epochs = [re.fullmatch(r"train epoch (\d+)/6: train_loss \d+\.\d{4}, valid_mse \d+\.\d{4}", line) for line in lines]
    assert [int(match[1]) for match in epochs] == [1, 2, 3, 4, 5, 6]


def test_progress_in_a_terminal_is_a_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    _fit(TrainConfig(epochs=3, batch_size=8, lr=0.01))
    err = sys.stderr.getvalue()

    assert "\r" in err and "epoch" in err and "epoch 1/3:" not in err


def test_no_progress_writes_nothing(capsys):
    _fit(TrainConfig(epochs=3, lr=0.01, progress=False))
    assert capsys.readouterr().err == ""

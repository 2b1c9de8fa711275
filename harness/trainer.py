"""The one training loop every torch family goes through.

AdamW with decoupled weight decay (none on biases, norms or other 1-D parameters), linear
warm-up then cosine decay per step, optional gradient accumulation, global gradient-norm clipping, early stopping on the
validation metric in the metric's own direction, and the best weights restored at the end.
AMP and ``torch.compile`` are used only on CUDA; on CPU the loop is seeded and deterministic.

A module trained here implements ``training_step(batch) -> loss``; it may also implement
``param_groups() -> [{"params": [...], "lr_scale": float}, ...]`` and ``epoch_logs() -> dict``
(scalars logged every epoch, e.g. modality weights).

Epochs count from 1 everywhere (results, checkpoints, progress): epoch 1 is the first pass.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from harness.config import TrainConfig
from harness.io import save_checkpoint
from harness.metrics import Metric

__all__ = ["Trainer", "TrainResult", "warmup_cosine"]


@dataclass
class TrainResult:
    best_epoch: int  # epoch whose weights were restored, counted from 1 (0: no epoch improved on the worst score)
    best_score: float  # validation metric at that epoch
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of logs per epoch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at ``step``."""
    # 1) linear warm-up from ~0 to 1 over warmup_steps
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    # 2) cosine decay from 1 to 0 over the remaining steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Trains one module on one fold.

    Args:
        config: the loop's hyper-parameters (:class:`harness.config.TrainConfig`).
        metric: validation metric; ``metric.greater_is_better`` decides what "improves" means.
        device: torch device string.
        seed: seeds the shuffling of batches.
        log_metrics: ``(metrics, epoch)`` callback, called once per epoch (MLflow in the CV runner).
        workdir: if given, ``best.pt`` and ``final.pt`` state dicts are written there.
        desc: label of the progress (e.g. ``"fold 1"``): a bar in a terminal, else one line per epoch.
    """

    def __init__(
        self,
        config: TrainConfig,
        metric: Metric,
        device: str = "cpu",
        seed: int = 0,
        log_metrics: Callable[[dict[str, float], int], None] | None = None,
        workdir: Path | None = None,
        desc: str = "train",
    ):
        self.config = config
        self.metric = metric
        self.device = torch.device(device)
        self.seed = seed
        self.log_metrics = log_metrics or (lambda metrics, step: None)
        self.workdir = workdir
        self.desc = desc

    def fit(
        self,
        module: nn.Module,
        train_data: Dataset,
        evaluate: Callable[[nn.Module], float],
        collate_fn: Callable | None = None,
        batch_sampler: Sampler[list[int]] | None = None,
    ) -> TrainResult:
        """Train ``module`` on ``train_data``; ``evaluate(module)`` returns the validation metric.

        ``evaluate`` is called in eval mode under ``torch.no_grad()`` after every epoch. A
        ``batch_sampler`` (e.g. re-ID's P identities x K images) replaces the shuffled batches of
        ``config.batch_size`` rows; it is iterated once per epoch and must be seeded itself.
        """
        cfg = self.config
        module.to(self.device)
        on_cuda = self.device.type == "cuda"
        step_module = torch.compile(module) if (cfg.compile and on_cuda) else module

        generator = torch.Generator().manual_seed(self.seed)
        if batch_sampler is None:
            loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                                collate_fn=collate_fn)  # fmt: skip
        else:
            loader = DataLoader(train_data, batch_sampler=batch_sampler, collate_fn=collate_fn)
        optimizer = torch.optim.AdamW(self._param_groups(module), lr=cfg.lr)
        accumulate = cfg.grad_accumulation
        steps_per_epoch = -(-len(loader) // accumulate)  # an epoch's last, shorter group still steps
        optimizer.zero_grad(set_to_none=True)
        total_steps = max(1, cfg.epochs * steps_per_epoch)
        warmup_steps = max(1, int(cfg.warmup_ratio * total_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps)
        )
        amp_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
        use_amp = cfg.amp and on_cuda
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        best_score, best_epoch, best_state = self.metric.worst, 0, None
        result = TrainResult(best_epoch=0, best_score=best_score, epochs_run=0)
        progress = _Progress(self.desc, cfg.epochs, self.metric.name, enabled=cfg.progress)
        for epoch in range(1, cfg.epochs + 1):
            module.train()
            total_loss, n_rows = 0.0, 0
            for index, batch in enumerate(loader):
                batch = _to_device(batch, self.device)
                group = min(accumulate, len(loader) - index // accumulate * accumulate)  # passes in this step
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = step_module.training_step(batch)
                scaler.scale(loss / group).backward()
                if (index + 1) % accumulate == 0 or index + 1 == len(loader):
                    if cfg.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                rows = _batch_len(batch)
                total_loss += float(loss.detach()) * rows
                n_rows += rows

            module.eval()
            with torch.no_grad():
                score = float(evaluate(module))
            logs = {"train_loss": total_loss / max(1, n_rows), f"valid_{self.metric.name}": score,
                    "lr": scheduler.get_last_lr()[0]}  # fmt: skip
            logs.update(getattr(module, "epoch_logs", dict)())
            result.history.append(logs)
            self.log_metrics(logs, epoch)

            if self.metric.better(score, best_score):
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            progress.epoch(epoch, logs["train_loss"], score)
            result.epochs_run = epoch
            if epoch - best_epoch >= cfg.patience:
                break
        progress.close()

        if self.workdir is not None:
            save_checkpoint(self.workdir / "final.pt", {"state_dict": module.state_dict(), "epoch": result.epochs_run})
        if best_state is not None:
            module.load_state_dict(best_state)
            if self.workdir is not None:
                save_checkpoint(self.workdir / "best.pt", {"state_dict": best_state, "epoch": best_epoch})
        result.best_epoch, result.best_score = best_epoch, best_score
        return result

    def _param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """Decay matrices only; scale the learning rate of groups that ask for it."""
        groups = getattr(module, "param_groups", lambda: [{"params": list(module.parameters())}])()
        optim_groups = []
        for group in groups:
            params = [p for p in group["params"] if p.requires_grad]
            lr = self.config.lr * group.get("lr_scale", 1.0)
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            if decay:
                optim_groups.append({"params": decay, "lr": lr, "weight_decay": self.config.weight_decay})
            if no_decay:
                optim_groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
        return optim_groups


class _Progress:
    """Per-epoch progress on stderr: a bar in a terminal, one plain line per epoch elsewhere.

    Redirected to a file (CI, nohup), a bar's carriage-return updates would pile up into one line
    of tens of kilobytes per fold; a line per epoch stays readable and greppable.
    """

    def __init__(self, desc: str, epochs: int, metric_name: str, enabled: bool):
        self.desc, self.epochs, self.metric_name = desc, epochs, metric_name
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=epochs, desc=desc, disable=not enabled or self.lines, leave=False, unit="epoch")

    def epoch(self, epoch: int, train_loss: float, score: float) -> None:
        if self.lines:
            print(f"{self.desc} epoch {epoch}/{self.epochs}: train_loss {train_loss:.4f}, "
                  f"valid_{self.metric_name} {score:.4f}", file=sys.stderr, flush=True)  # fmt: skip
        else:
            self.bar.set_postfix(loss=f"{train_loss:.4f}", **{self.metric_name: f"{score:.4f}"}, refresh=False)
            self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    return _batch_len(batch[0])

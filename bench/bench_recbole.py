"""Side by side with RecBole 1.2.1: the same MovieLens sequences under the same leave-one-out protocol.

Data. The harness reader (:func:`harness.data.load_dataset`, default k-core 5/5, its time order and
tie order) builds every user's sequence ``s_1 .. s_n``. The bench writes exactly those sequences as
RecBole's atomic file ``<name>.inter`` (``user_id:token  item_id:token  timestamp:float``): one row
per interaction, the timestamp is the item's position in the user's sequence, so RecBole's time sort
cannot reorder anything. Rows are written in ascending harness item id, so RecBole's ids (order of
first appearance) equal the harness's. RecBole is configured to filter nothing and to split
leave-one-out by time (``eval_args: {split: {LS: valid_and_test}, order: TO, mode: full, group_by:
user}``): train ``s_1 .. s_{n-2}``, validation ``s_{n-1}``, test ``s_n``, exactly the harness split;
the bench checks this user by user on RecBole's Pop dataset (and the sample count of its SASRec
dataset) and prints any difference. Metrics: Hit/NDCG/MRR at 5, 10 and 20 under full ranking with the history masked;
the harness side is scored through its own task adapter, the RecBole side by RecBole's evaluator.

1. Popularity. RecBole's ``Pop`` against the harness ``popularity`` family fitted with an empty
   training frame and ``valid = dataset.train``, whose training sequences are every user's
   ``s_1 .. s_{n-2}``: RecBole's training split. Bar: Hit/NDCG/MRR@10 equal to 1e-4. Two RecBole
   settings matter: ``train_neg_sample_args: None`` (RecBole's default samples one negative item per
   interaction, and Pop counts the negatives too) and ``train_batch_size: 1``: ``Pop`` adds 1 to
   ``item_cnt[item]`` with an indexed assignment, so an item repeated within a batch counts once, and
   with larger batches Pop counts batches, not interactions. The bench also runs Pop at RecBole's
   default batch (2048) to show that. ``repeatable: False``, since RecBole masks the history only
   without it. What is left is the order of items with equal counts: the harness puts the lower item
   id first, RecBole takes ``torch.topk``'s order, which is unspecified among equal scores; when the
   scores differ the bench checks counts, split and ids, then prints how many test targets are tied
   within the top 20 and the range the metrics span over all tie orders.
2. SASRec. RecBole's ``SASRec`` against the harness ``sasrec`` family at equal epochs with what both
   expose matched: width 64, 2 blocks, 2 heads, feed-forward width 64, dropout 0.2 (RecBole's hidden
   and attention dropout), ``max_len`` 50, layer-norm eps 1e-5, AdamW with the same learning rate and
   no weight decay, gradient-norm clipping at 1.0, cross-entropy over every item, the same patience
   (none by default) and, on both sides, the weights of the epoch best on validation NDCG@10.
   Batches: the harness steps through users' sequences, RecBole through every prefix of them (one
   sample per target), so RecBole's batch is sized to take the same number of steps per epoch.
   RecBole needs ``repeatable: True`` for sequential models and then masks no history in full
   ranking, so the bench runs a subclass whose ``full_sort_predict`` masks the items before the
   target (its own unmasked numbers are printed as well). Not matched, because neither side exposes
   it: training samples (RecBole: every prefix, loss at its last position; harness: each user's last
   50 items, loss at every position, so older targets of longer users are not trained on), the
   learning-rate schedule (harness: warm-up + cosine; RecBole: constant), pre- vs post-layer-norm
   blocks, embedding scaling and initialisation, and left vs right alignment of the positions.
   Target: harness scores at least 90 % of RecBole's; seconds per epoch (fit time / epochs, each
   epoch's validation pass included on both sides) as a ratio harness / RecBole.

Run in the bench environment (RecBole is never a project dependency)::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . -r bench/requirements-peers.txt
    .venv-bench/bin/python bench/bench_recbole.py [--epochs 5] [--data DIR] [--device cpu]

The default (one SASRec epoch) is a smoke run: RecBole's SASRec epoch dominates (98k prefixes of 50
items, 5-10 min on 2 shared CPU cores; RecBole's Pop at batch 1 takes 1-4 min); both models are
still below popularity after one epoch, so compare scores at ``--epochs 5`` or more.

Workarounds for RecBole 1.2.1 on NumPy 2 / torch 2.14, all inside this script:

* ``Config`` re-creates ``np.float``, ``np.complex``, ``np.unicode`` ... from ``np.float_``,
  ``np.complex_``, ``np.unicode_``, which NumPy 2 removed: those three are defined (as ``np.float64``,
  ``np.complex128``, ``np.str_``) before RecBole is used.
* ``recbole.quick_start`` imports ray, which needs ``pkg_resources`` (gone from current setuptools):
  the bench uses ``Config``, ``create_dataset``, ``data_preparation`` and the trainers directly.
* ``Trainer.evaluate(load_best_model=True)`` calls ``torch.load`` with torch's ``weights_only=True``
  default, which refuses the pickled ``Config`` in RecBole's checkpoint: the bench loads the best
  checkpoint itself (``weights_only=False``, a file it just wrote) and evaluates with
  ``load_best_model=False``.
* Importing ``recbole.model.sequential_recommender`` runs ``torch.autograd.set_detect_anomaly(True)``
  (module level of its SINE model), which makes every backward pass in the process, the harness's
  included, 2-3x slower: the bench switches it off again after the import (results are unchanged).
* ``Config`` reads ``--key=value`` command-line arguments as its own settings and sets
  ``CUDA_VISIBLE_DEVICES`` from ``gpu_id``: it is built with an empty command line, the variable is
  restored and the device set explicitly. RecBole writes TensorBoard logs into the working
  directory: the bench runs in a temporary one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.config import TrainConfig, build
from harness.data import Dataset, load_dataset
from harness.metrics import get_metric, ranking_report
from harness.tasks.recommendation import REPORT_KS, item_counts, training_sequences
from harness.registry import FitContext, create_model, get_model_entry
from harness.runtime import resolve_device, seed_everything
from harness.tasks import get_task_adapter

REPO = Path(__file__).resolve().parents[1]
SETUP = (f"cd {REPO} && python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . -r "
         "bench/requirements-peers.txt && .venv-bench/bin/python bench/bench_recbole.py")  # fmt: skip

for _name, _alias in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
    if not hasattr(np, _name):  # NumPy 2 removed them; RecBole's Config aliases np.float etc. to them
        setattr(np, _name, _alias)
try:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import Pop
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import TraditionalTrainer, Trainer
    from recbole.utils import init_seed
except ImportError as exc:  # main() says how to create the bench env
    RECBOLE_MISSING: ImportError | None = exc
    SASRec = torch.nn.Module  # stands in as MaskedSASRec's base, which is then never instantiated
else:
    RECBOLE_MISSING = None
    torch.autograd.set_detect_anomaly(False)  # importing SASRec imports SINE, whose module switches it on

NAME = "harness_movielens"  # RecBole dataset name: <workdir>/NAME/NAME.inter
METRICS = ("hit", "ndcg", "mrr")
POP_BAR = 1e-4  # popularity: max |harness - RecBole| on Hit/NDCG/MRR@10
SASREC_BAR = 0.9  # SASRec: harness >= this share of RecBole on Hit/NDCG/MRR@10
RECBOLE_POP_DEFAULT_BATCH = 2048  # RecBole's train_batch_size default
MAX_LEN = 50  # SASRec: most recent items read, both sides


@dataclass
class Result:
    model: str
    side: str
    scores: dict[str, float]  # "ndcg@10" -> value
    seconds_per_epoch: float
    ratio: str = ""


# ----------------------------------------------------------------------------
# Data: the harness's sequences as RecBole's atomic file, and the split check
# ----------------------------------------------------------------------------


def load_sequences(data_dir: str | None) -> Dataset:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset("movielens", data_dir, data_root=REPO / "data")
    for warning in caught:
        print(f"harness reader: {warning.message}")
    return dataset


def full_sequences(dataset: Dataset) -> list[np.ndarray]:
    """Each user's ``s_1 .. s_n``: the test history and the test target."""
    return [np.append(h, t).astype(np.int64) for h, t in zip(dataset.test["history"], dataset.test["target"])]


def write_atomic(dataset: Dataset, root: Path) -> Path:
    """``root/NAME/NAME.inter``: one row per interaction, timestamp = position in the user's sequence,
    rows in ascending item id so that RecBole's ids (first appearance) are the harness's."""
    sequences = full_sequences(dataset)
    frame = pd.DataFrame({
        "user_id:token": np.repeat(dataset.test["user_id"].to_numpy(), [len(s) for s in sequences]),
        "item_id:token": np.concatenate(sequences),
        "timestamp:float": np.concatenate([np.arange(len(s)) for s in sequences]).astype(float),
    })  # fmt: skip
    frame = frame.sort_values(["item_id:token", "user_id:token"], kind="stable")
    path = root / NAME / f"{NAME}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, float_format="%.0f")
    return path


def harness_ids(recbole_dataset, field: str, ids) -> np.ndarray:
    """RecBole's internal ids of ``field`` as the harness ids they were written from."""
    tokens = recbole_dataset.field2id_token[field]
    return np.asarray([int(tokens[i]) for i in np.asarray(ids)], np.int64)


def recbole_parts(datasets) -> list[dict[int, np.ndarray]]:
    """Per split (train, valid, test) of a general RecBole dataset: harness user id -> harness item ids in order."""
    parts = []
    for part in datasets:
        feat = part.inter_feat
        users = harness_ids(part, part.uid_field, feat[part.uid_field].numpy())
        items = harness_ids(part, part.iid_field, feat[part.iid_field].numpy())
        order = np.lexsort((feat[part.time_field].numpy(), users))
        users, items = users[order], items[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        parts.append(dict(zip(users[starts].tolist(), np.split(items, starts[1:]))))
    return parts


def split_differences(dataset: Dataset, datasets) -> list[str]:
    """How RecBole's train/valid/test split differs from the harness's (empty: identical)."""
    train, valid, test = recbole_parts(datasets)
    expected = (
        dict(zip(dataset.train["user_id"], dataset.train["history"])),
        {u: np.array([t]) for u, t in zip(dataset.train["user_id"], dataset.train["target"])},
        {u: np.array([t]) for u, t in zip(dataset.test["user_id"], dataset.test["target"])},
    )
    problems = []
    for what, got, want in zip(("training items", "validation item", "test item"), (train, valid, test), expected):
        differ = [u for u in want if u not in got or not np.array_equal(got[u], want[u])]
        extra = sorted(set(got) - set(want))
        if differ:
            u = differ[0]
            theirs, ours = got.get(u, np.array([]))[:8].tolist(), np.asarray(want[u])[:8].tolist()
            problems.append(f"{len(differ)} users' {what} differ (user {u}, first 8: RecBole {theirs}, harness {ours})")
        if extra:
            problems.append(f"{len(extra)} users have {what} in RecBole only (e.g. user {extra[0]})")
    item_tokens = datasets[0].field2id_token[datasets[0].iid_field][1:].astype(np.int64)
    if not np.array_equal(item_tokens, np.arange(1, len(item_tokens) + 1)):
        problems.append("RecBole's item ids are not the harness's (tie order among equal scores may differ)")
    return problems


# ----------------------------------------------------------------------------
# RecBole
# ----------------------------------------------------------------------------


def recbole_config(model: str, workdir: Path, device: str, seed: int, **settings) -> Config:
    """RecBole's config for ``model`` on the atomic file in ``workdir``: the shared protocol plus ``settings``."""
    base = {
        "data_path": str(workdir), "checkpoint_dir": str(workdir / "saved"), "gpu_id": "", "seed": seed,
        "reproducibility": True, "state": "WARNING", "show_progress": False, "metric_decimal_place": 8,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",  # no filtering of its own
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": list(REPORT_KS), "valid_metric": "NDCG@10",
        "train_neg_sample_args": None,
    }  # fmt: skip
    argv, visible = sys.argv, os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        sys.argv = argv[:1]  # Config parses --key=value arguments as settings
        config = Config(model=model, dataset=NAME, config_dict={**base, **settings})
    finally:
        sys.argv = argv
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
    config["device"] = torch.device(device)
    init_seed(seed, True)
    return config


def recbole_scores(result) -> dict[str, float]:
    return {key: float(value) for key, value in result.items()}


def recbole_pop(workdir: Path, device: str, seed: int, batch_size: int):
    """RecBole's Pop trained with ``batch_size``: (its test scores, seconds, the model, the split datasets)."""
    config = recbole_config("Pop", workdir, device, seed, train_batch_size=batch_size, repeatable=False)
    train, valid, test = data_preparation(config, create_dataset(config))
    model = Pop(config, train.dataset).to(config["device"])
    trainer = TraditionalTrainer(config, model)
    started = time.perf_counter()
    trainer.fit(train, valid, saved=False)
    seconds = time.perf_counter() - started
    scores = recbole_scores(trainer.evaluate(test, load_best_model=False))
    return scores, seconds, model, (train.dataset, valid.dataset, test.dataset)


class MaskedSASRec(SASRec):
    """RecBole's SASRec whose full ranking masks the items the user had before the target.

    RecBole 1.2.1 masks no history for sequential models; ``positions[user, item]`` is the item's
    position in the user's sequence (a large number when absent), so the items before the target
    are those with a smaller position than the target's. ``mask_history = False`` restores RecBole.
    """

    def __init__(self, config, dataset, positions: torch.Tensor):
        super().__init__(config, dataset)
        self.positions = positions.to(config["device"])
        self.mask_history = True

    def full_sort_predict(self, interaction):
        scores = super().full_sort_predict(interaction)
        if not self.mask_history:
            return scores
        rows = self.positions[interaction[self.USER_ID]]
        before = rows < rows.gather(1, interaction[self.ITEM_ID].unsqueeze(1))
        return scores.masked_fill(before, -math.inf)


def item_positions(dataset: Dataset, recbole_dataset) -> torch.Tensor:
    """``[RecBole users, RecBole items]`` position of each item in each user's sequence (int32 max if absent)."""
    user_id = recbole_dataset.field2token_id[recbole_dataset.uid_field]
    item_id = recbole_dataset.field2token_id[recbole_dataset.iid_field]
    positions = torch.full((recbole_dataset.user_num, recbole_dataset.item_num), torch.iinfo(torch.int32).max,
                           dtype=torch.int32)  # fmt: skip
    for user, sequence in zip(dataset.test["user_id"], full_sequences(dataset)):
        items = torch.as_tensor([item_id[str(i)] for i in sequence])
        positions[user_id[str(user)], items] = torch.arange(len(sequence), dtype=torch.int32)
    return positions


def recbole_sasrec(dataset: Dataset, args, workdir: Path, device: str, batch_size: int):
    """RecBole's SASRec: masked test scores, its own unmasked ones, seconds per epoch, (samples, steps per epoch)."""
    config = recbole_config(
        "SASRec", workdir, device, args.seed, repeatable=True, epochs=args.epochs, train_batch_size=batch_size,
        learning_rate=args.lr, learner="adamw", weight_decay=0.0, clip_grad_norm={"max_norm": 1.0},
        stopping_step=args.patience - 1, loss_type="CE", MAX_ITEM_LIST_LENGTH=MAX_LEN, hidden_size=64, inner_size=64,
        n_layers=2, n_heads=2, hidden_dropout_prob=args.dropout, attn_dropout_prob=args.dropout, hidden_act="gelu",
        layer_norm_eps=1e-5,
    )  # fmt: skip
    train, valid, test = data_preparation(config, create_dataset(config))
    model = MaskedSASRec(config, train.dataset, item_positions(dataset, train.dataset)).to(config["device"])
    trainer = Trainer(config, model)
    started = time.perf_counter()
    trainer.fit(train, valid, saved=True)
    seconds = (time.perf_counter() - started) / len(trainer.train_loss_dict)
    best = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)  # our own file
    model.load_state_dict(best["state_dict"])
    masked = recbole_scores(trainer.evaluate(test, load_best_model=False))
    model.mask_history = False
    unmasked = recbole_scores(trainer.evaluate(test, load_best_model=False))
    return masked, unmasked, seconds, (len(train.dataset), len(train))


# ----------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------


def harness_fit(name: str, params: dict, train_values: dict, dataset: Dataset, device: str, seed: int,
                workdir: Path):  # fmt: skip
    """Fit family ``name`` on every user's ``s_1 .. s_{n-2}``, validated on ``s_{n-1}``; (test scores, s/epoch)."""
    seed_everything(seed)
    train_config = build(TrainConfig, {**get_model_entry(name).train_defaults, **train_values, "progress": False},
                         "train")  # fmt: skip
    epochs: list[dict] = []
    ctx = FitContext(dataset=dataset, metric=get_metric("ndcg@10_full"), train_config=train_config, device=device,
                     seed=seed, fold=0, workdir=workdir / name, cache_dir=workdir / "cache",
                     log_metrics=lambda logs, step: epochs.append(logs))  # fmt: skip
    family = create_model(name, params)
    started = time.perf_counter()
    family.fit(dataset.train.iloc[:0], dataset.train, ctx)
    seconds = (time.perf_counter() - started) / max(1, len(epochs))
    report = get_task_adapter(dataset.task).report(dataset, dataset.test, family.predict(dataset.test))
    scores = {key.removesuffix("_full"): value for key, value in report.items() if key.endswith("_full")}
    return scores, seconds


# ----------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------


def compare_popularity(dataset: Dataset, args, workdir: Path, device: str) -> tuple[list[Result], str]:
    ours, our_seconds = harness_fit("popularity", {}, {}, dataset, device, args.seed, workdir)
    theirs, seconds, model, datasets = recbole_pop(workdir, device, args.seed, args.pop_batch_size)
    default, default_seconds, default_model, _ = recbole_pop(workdir, device, args.seed, RECBOLE_POP_DEFAULT_BATCH)
    split = split_differences(dataset, datasets)
    print("split: " + ("; ".join(split) if split else
                       f"identical ({len(dataset.test):,} users, {int(dataset.meta['n_items']) - 1:,} items; RecBole "
                       f"train/valid/test {[len(d) for d in datasets]} interactions)"))  # fmt: skip
    counts = item_counts(list(training_sequences(dataset.train.iloc[:0], dataset.train)), int(dataset.meta["n_items"]))
    print(f"RecBole Pop at batch {RECBOLE_POP_DEFAULT_BATCH}: "
          + ("; ".join(count_differences(counts, default_model, datasets[0])) or "counts agree"))  # fmt: skip
    rows = [
        Result("Pop", f"RecBole (batch {args.pop_batch_size})", theirs, seconds),
        Result("Pop", f"RecBole (batch {RECBOLE_POP_DEFAULT_BATCH})", default, default_seconds),
        Result("Pop", "harness", ours, our_seconds, f"{our_seconds / seconds:.4f}"),
    ]
    gap = max(abs(ours[f"{m}@10"] - theirs[f"{m}@10"]) for m in METRICS)
    gap_all = max(abs(ours[key] - theirs[key]) for key in theirs)
    line = (f"Pop: max |harness - RecBole| on Hit/NDCG/MRR@10 = {gap:.2e}, at @5/@10/@20 {gap_all:.2e} "
            f"(bar {POP_BAR:g} at @10): {'PASS' if gap <= POP_BAR else 'FAIL'}")  # fmt: skip
    if gap_all > 1e-9:
        reasons = count_differences(counts, model, datasets[0]) + split or [tie_order(dataset, counts, theirs)]
        line += "\n  why: " + "; ".join(reasons)
    return rows, line


def count_differences(counts: np.ndarray, model, recbole_dataset) -> list[str]:
    """Whether RecBole's Pop counted each item's training interactions as the harness does."""
    theirs = np.zeros_like(counts)
    theirs[harness_ids(recbole_dataset, recbole_dataset.iid_field, np.arange(1, recbole_dataset.item_num))] = \
        model.item_cnt[1:, 0].cpu().numpy()  # fmt: skip
    differ = np.flatnonzero(theirs != counts)
    if not len(differ):
        return []
    return [f"item counting: {len(differ)} items' counts differ (up to {np.abs(theirs - counts).max()}; RecBole's Pop "
            "adds 1 per distinct item per training batch, so a batch larger than 1 counts batches, not interactions)"]


def tie_order(dataset: Dataset, counts: np.ndarray, theirs: dict[str, float]) -> str:
    """With counts, split and ids equal, only the order among equal counts is left: how far it reaches."""
    best, worst = [], []
    for history, target in zip(dataset.test["history"], dataset.test["target"]):
        candidate = np.ones(len(counts), bool)
        candidate[[0, *history]] = False
        others = counts[candidate]
        best.append(int((others > counts[target]).sum()))
        worst.append(best[-1] + int((others == counts[target]).sum()) - 1)  # minus the target itself
    best, worst = np.array(best), np.array(worst)
    tied = int(((worst > best) & (best < max(REPORT_KS))).sum())
    low, high = (ranking_report(worst, REPORT_KS), ranking_report(best, REPORT_KS))
    inside = all(low[f"{key}_full"] - 1e-9 <= value <= high[f"{key}_full"] + 1e-9 for key, value in theirs.items())
    return (f"tie order: counts, split and ids agree, and {tied} test targets share their count with other "
            f"candidates within the top {max(REPORT_KS)}: the harness ranks equal counts by lower item id, RecBole "
            f"in torch.topk's order; NDCG@10 over all tie orders spans [{low['ndcg@10_full']:.4f}, "
            f"{high['ndcg@10_full']:.4f}], and RecBole's scores are {'inside' if inside else 'OUTSIDE'} the ranges")


def compare_sasrec(dataset: Dataset, args, workdir: Path, device: str) -> tuple[list[Result], str]:
    params = {"max_len": MAX_LEN, "hidden_dim": 64, "n_blocks": 2, "n_heads": 2, "dropout": args.dropout}
    train_values = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.0,
                    "grad_clip": 1.0, "patience": args.patience}  # fmt: skip
    sequences = [h for h in dataset.train["history"] if len(h) >= 2]
    steps = math.ceil(len(sequences) / args.batch_size)
    targets = sum(min(len(h) - 1, MAX_LEN) for h in sequences)  # the harness: each sequence's last MAX_LEN targets
    prefixes = sum(len(h) - 1 for h in sequences)  # RecBole: every prefix of s_1..s_{n-2} and its next item
    batch = math.ceil(prefixes / steps)
    print(f"SASRec: epochs {args.epochs}, lr {args.lr}, dropout {args.dropout}, patience {args.patience}; {steps} "
          f"steps per epoch on both sides: harness batch {args.batch_size} sequences ({targets:,} targets per epoch), "
          f"RecBole batch {batch} prefixes ({prefixes:,} targets per epoch)")  # fmt: skip
    ours, our_seconds = harness_fit("sasrec", params, train_values, dataset, device, args.seed, workdir)
    theirs, unmasked, seconds, shape = recbole_sasrec(dataset, args, workdir, device, batch)
    if shape != (prefixes, steps):
        print(f"note: RecBole trained on {shape[0]:,} samples in {shape[1]} steps per epoch")
    ratios = {m: ours[f"{m}@10"] / theirs[f"{m}@10"] if theirs[f"{m}@10"] else math.inf for m in METRICS}
    rows = [
        Result("SASRec", "RecBole (history masked)", theirs, seconds),
        Result("SASRec", "RecBole (own protocol, unmasked)", unmasked, seconds),
        Result("SASRec", "harness", ours, our_seconds, f"{our_seconds / seconds:.4f}"),
    ]
    verdict = "PASS" if min(ratios.values()) >= SASREC_BAR else "FAIL"
    line = (f"SASRec: harness / RecBole Hit@10 {ratios['hit']:.3f}, NDCG@10 {ratios['ndcg']:.3f}, MRR@10 "
            f"{ratios['mrr']:.3f}, s/epoch {our_seconds / seconds:.4f} (bar: scores >= {SASREC_BAR:.0%} of RecBole's): "
            f"{verdict}")  # fmt: skip
    return rows, line


def print_table(rows: list[Result]) -> None:
    header = ("model", "side", "Hit@10", "NDCG@10", "MRR@10", "s/epoch", "ratio")
    cells = [(r.model, r.side, *(f"{r.scores[f'{m}@10']:.4f}" for m in METRICS), f"{r.seconds_per_epoch:.3f}", r.ratio)
             for r in rows]  # fmt: skip
    widths = [max(len(str(row[i])) for row in (header, *cells)) for i in range(len(header))]
    for row in (header, *cells):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print("(ratio: harness s/epoch / RecBole s/epoch, RecBole's first row of the model)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a MovieLens directory (default: the embedded data)")
    parser.add_argument("--epochs", type=int, default=1, help="SASRec epochs on both sides (default 1)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: none)")
    parser.add_argument("--batch-size", type=int, default=32, help="harness SASRec sequences per step (default 32)")
    parser.add_argument("--lr", type=float, default=5e-3, help="SASRec learning rate, both sides (default 5e-3)")
    parser.add_argument("--dropout", type=float, default=0.2, help="SASRec dropout, both sides (default 0.2)")
    parser.add_argument("--pop-batch-size", type=int, default=1,
                        help="RecBole Pop train_batch_size (default 1: the only size at which it counts interactions)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-sasrec", action="store_true", help="compare popularity only")
    args = parser.parse_args()
    args.patience = args.patience or args.epochs
    return args


def main() -> None:
    args = parse_args()
    if RECBOLE_MISSING is not None:
        sys.exit(f"bench_recbole: RecBole is not importable ({RECBOLE_MISSING}); create the bench env: {SETUP}")
    warnings.filterwarnings("ignore", module=r"recbole\.")  # pandas/torch deprecations inside RecBole
    device = resolve_device(args.device)
    started = time.perf_counter()
    dataset = load_sequences(args.data)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench_recbole_") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # RecBole writes log_tensorboard/ into the working directory
        write_atomic(dataset, workdir)
        print(f"data: {dataset.root} ({len(dataset.test):,} users, {int(dataset.meta['n_items']) - 1:,} items, "
              f"{sum(len(h) + 1 for h in dataset.test['history']):,} interactions); device {device}, seed {args.seed}, "
              f"{torch.get_num_threads()} threads")  # fmt: skip
        comparisons = [compare_popularity(dataset, args, workdir, device)]
        if not args.skip_sasrec:
            comparisons.append(compare_sasrec(dataset, args, workdir, device))
        os.chdir(cwd)
    print()
    print_table([row for rows, _ in comparisons for row in rows])
    print()
    print("\n".join(line for _, line in comparisons))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

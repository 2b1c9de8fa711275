"""Does the multi-scale gate weight the scale that carries the identity? (the seed's hope, measured)

For each of ``fine``, ``mid`` and ``coarse``, the embedded generator writes a Market-layout set
whose identities live at that scale only (``generate_reid(cue_scales=(scale,))``: the other
scales are drawn afresh for every image), and ``all`` one where they live at every scale, as in
the default data; ``multiscale_moe_reid`` trains on its training identities through the family's
own ``fit`` (P x K batches, the training loop) and the mean gate weight of every scale's expert
is read off its routing report on the held-out identities. If the gate followed the identity,
each row's largest weight would sit in its own scale's column.

To tell a gate that ignores the identity from scales that do not carry it, the same trained
network is also scored with each expert alone (the gate's router masked to that one expert, so
its weight is exactly 1): held-out mAP per expert, next to the mAP of random embeddings on the
same query / gallery (chance). The scale whose expert scores best alone is where this network
reads the identity; a gate that follows it has its largest weight there.

    python bench/bench_gate_scales.py                       # 150 + 60 identities, 20 epochs
    python bench/bench_gate_scales.py --epochs 40 --ids 300 --cues fine
    python bench/bench_gate_scales.py model.temperature=0.5 model.balance_weight=0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.config import TrainConfig, parse_overrides
from harness.data.reid import CUE_SCALES, generate_reid, read_market1501
from harness.metrics import get_metric
from harness.registry import FitContext, create_model
from harness.tasks.reid import TASK, ReIDEmbeddings

SCALE_OF_CUES = {"fine": "4px", "mid": "8px", "coarse": "16px"}


class OneExpert(nn.Module):
    """The trained gate with its router masked to one expert: that expert's weight is exactly 1."""

    def __init__(self, gate: nn.Module, expert: int):
        super().__init__()
        self.gate, self.allowed = gate, torch.arange(gate.n_experts) == expert

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        return self.gate(x, mask=self.allowed if mask is None else mask & self.allowed)


def alone_maps(family, valid) -> dict[str, float]:
    """Held-out mAP of the trained network with each scale's expert alone."""
    network, gate, maps = family.network, family.network.gate, {}
    try:
        for e, scale in enumerate(network.scales):
            network.gate = OneExpert(gate, e)
            maps[f"{scale}px"] = TASK.metrics(valid, family.predict(valid))["map"]
    finally:
        network.gate = gate
    return maps


def chance_map(valid, dim: int, seed: int, draws: int = 10) -> float:
    """Mean held-out mAP of random embeddings (the level an expert that reads nothing scores)."""
    rng, space = np.random.default_rng(seed), np.zeros(len(valid))
    return float(np.mean([TASK.metrics(valid, ReIDEmbeddings(rng.standard_normal((len(valid), dim)), space))["map"]
                          for _ in range(draws)]))  # fmt: skip


def measure(cues: str, args, params: dict, root: Path) -> dict:
    data = root / cues
    generate_reid(data, n_train_ids=args.ids, n_test_ids=args.valid_ids, n_distractors=0, n_junk=0,
                  cue_scales=CUE_SCALES if cues == "all" else (cues,), seed=args.seed)  # fmt: skip
    dataset = read_market1501(data)
    # the dataset's own test identities are the held-out ones: query / gallery as the generator split them
    train, valid = dataset.train, dataset.test
    family = create_model("multiscale_moe_reid", params)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, weight_decay=5e-4, warmup_ratio=0.1,
                         patience=args.epochs, progress=False)  # fmt: skip
    ctx = FitContext(dataset, get_metric("map"), config, "cpu", args.seed, 0, root / f"{cues}-fold",
                     root / "cache", lambda logs, step: None, log=lambda message: None)  # fmt: skip
    family.fit(train, valid, ctx)
    report, alone = family.explain(), alone_maps(family, valid)
    return {"weights": [report[f"scale_weights/rgb/{scale}"] for scale in SCALE_OF_CUES.values()],
            "alone": [alone[scale] for scale in SCALE_OF_CUES.values()],
            "map": family.train_result.best_score,
            "chance": chance_map(valid, family.config.embed_dim, args.seed)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=150, help="training identities (default 150)")
    parser.add_argument("--valid-ids", type=int, default=60, help="held-out identities (default 60)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cues", nargs="+", choices=(*CUE_SCALES, "all"), default=[*CUE_SCALES, "all"],
                        help="where the identity lives, one row each (all: every scale, as in the default data)")
    parser.add_argument("overrides", nargs="*", help="model.key=value settings of multiscale_moe_reid")
    args = parser.parse_args()
    params = parse_overrides(args.overrides).get("model", {})
    print(f"multiscale_moe_reid, {args.ids} training / {args.valid_ids} held-out identities, {args.epochs} epochs, "
          f"seed {args.seed}, settings {params or 'defaults'}")  # fmt: skip
    scales = list(SCALE_OF_CUES.values())
    print(f"{'':<12} {'mean gate weight':>20}  {'mAP, expert alone':>20}  {'mAP':>6} {'mAP':>6}  largest gate weight")
    print(f"{'identity at':<12} {'4px':>6} {'8px':>6} {'16px':>6}  {'4px':>6} {'8px':>6} {'16px':>6}  {'gate':>6} "
          f"{'chance':>6}  on its scale? on the best alone?")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for cues in args.cues:
            row = measure(cues, args, params, Path(tmp))
            largest = scales[int(np.argmax(row["weights"]))]
            print(f"{cues:<12} " + " ".join(f"{w:6.3f}" for w in row["weights"]) + "  "
                  + " ".join(f"{m:6.3f}" for m in row["alone"]) + f"  {row['map']:6.3f} {row['chance']:6.3f}  "
                  f"{'-' if cues == 'all' else 'yes' if largest == SCALE_OF_CUES[cues] else 'no':<13} "
                  f"{'yes' if largest == scales[int(np.argmax(row['alone']))] else 'no'}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Does the multi-scale gate weight the scale that carries the identity? (the seed's hope, measured)

For each of ``fine``, ``mid`` and ``coarse``, the embedded generator writes a Market-layout set
whose identities live at that scale only (``generate_reid(cue_scales=(scale,))``: the other
scales are drawn afresh for every image); ``multiscale_moe_reid`` trains on its training
identities through the family's own ``fit`` (P x K batches, the training loop) and the mean gate
weight of every scale's expert is read off its routing report on the held-out identities. If the
gate followed the identity, each row's largest weight would sit in its own scale's column.

    python bench/bench_gate_scales.py                       # 150 + 60 identities, 20 epochs
    python bench/bench_gate_scales.py --epochs 40 --ids 300
    python bench/bench_gate_scales.py model.temperature=0.5 model.balance_weight=0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from harness.config import TrainConfig, parse_overrides
from harness.data.reid import CUE_SCALES, generate_reid, read_market1501
from harness.metrics import get_metric
from harness.registry import FitContext, create_model

SCALE_OF_CUES = {"fine": "4px", "mid": "8px", "coarse": "16px"}


def measure(cues: str, args, params: dict, root: Path) -> dict[str, float]:
    data = root / cues
    generate_reid(data, n_train_ids=args.ids, n_test_ids=args.valid_ids, n_distractors=0, n_junk=0,
                  cue_scales=(cues,), seed=args.seed)  # fmt: skip
    dataset = read_market1501(data)
    # the dataset's own test identities are the held-out ones: query / gallery as the generator split them
    train, valid = dataset.train, dataset.test
    family = create_model("multiscale_moe_reid", params)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, weight_decay=5e-4, warmup_ratio=0.1,
                         patience=args.epochs, progress=False)  # fmt: skip
    ctx = FitContext(dataset, get_metric("map"), config, "cpu", args.seed, 0, root / f"{cues}-fold",
                     root / "cache", lambda logs, step: None, log=lambda message: None)  # fmt: skip
    family.fit(train, valid, ctx)
    report = family.explain()
    return {scale: report[f"scale_weights/rgb/{scale}"] for scale in SCALE_OF_CUES.values()} | {
        "map": family.train_result.best_score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=150, help="training identities (default 150)")
    parser.add_argument("--valid-ids", type=int, default=60, help="held-out identities (default 60)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="model.key=value settings of multiscale_moe_reid")
    args = parser.parse_args()
    params = parse_overrides(args.overrides).get("model", {})
    print(f"multiscale_moe_reid, {args.ids} training / {args.valid_ids} held-out identities, {args.epochs} epochs, "
          f"seed {args.seed}, settings {params or 'defaults'}")  # fmt: skip
    print(f"{'identity at':<12} {'4px':>6} {'8px':>6} {'16px':>6} {'mAP':>6}  largest weight on its scale?")
    with tempfile.TemporaryDirectory() as tmp:
        for cues in CUE_SCALES:
            row = measure(cues, args, params, Path(tmp))
            weights = [row[s] for s in SCALE_OF_CUES.values()]
            hit = list(SCALE_OF_CUES.values())[int(np.argmax(weights))] == SCALE_OF_CUES[cues]
            print(f"{cues:<12} {weights[0]:6.3f} {weights[1]:6.3f} {weights[2]:6.3f} {row['map']:6.3f}  "
                  f"{'yes' if hit else 'no'}")  # fmt: skip


if __name__ == "__main__":
    main()

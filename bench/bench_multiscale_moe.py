"""The multi-scale MoE fusion of ``multiscale_moe_reid``: batched experts vs the seed's per-expert loop.

One set of weights, two forms of the same computation. The fusion step of the family (scale
vectors → one seed ``ExpertNetwork`` per scale → MLP gate → weighted sum, forward and backward of
a loss on the fused feature) is run with the experts as :class:`models.moe.ExpertBank` (every
layer one batched matmul over the stacked expert weights) and as the seed writes it (a list
comprehension, one expert after another: :meth:`~models.moe.ExpertBank.forward_loop`),
alternating step by step in the same run. Before timing, both are checked to agree (outputs and
every gradient, dropout off). Sizes default to the seed's (512-d scale features, hidden 1024,
512-d experts, 3 scales); ``--whole`` times the whole network step instead (trunk included, the
family's CPU defaults), where the fusion is a small share. The ratio is loop time / batched time
(> 1: batched is faster).

    python bench/bench_multiscale_moe.py                      # seed sizes, batch 64, cpu
    python bench/bench_multiscale_moe.py --batch 256 --experts 4
    python bench/bench_multiscale_moe.py --whole              # the family's whole training step
    python bench/bench_multiscale_moe.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.runtime import resolve_device
from models.moe import ExpertBank, MLPGate
from models.multiscale_moe_reid import MultiScaleMoEConfig, MultiScaleMoEReID


def fusion_step(bank: ExpertBank, gate: MLPGate, vectors: torch.Tensor, batched: bool) -> torch.Tensor:
    """Forward and backward of the fusion on ``vectors`` ``[S, B, C]``; returns the fused feature."""
    weights = gate(vectors.permute(1, 0, 2).flatten(1)).weights
    outputs = bank(vectors) if batched else bank.forward_loop(vectors)
    fused = (outputs * weights.t()[..., None]).sum(0)
    fused.square().mean().backward()
    return fused


def whole_step(network: MultiScaleMoEReID, batch, batched: bool) -> torch.Tensor:
    if not batched:
        network.experts.forward = network.experts.forward_loop
    try:
        loss = network.training_step(batch)
        loss.backward()
    finally:
        network.experts.__dict__.pop("forward", None)
    return loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--experts", type=int, default=3, help="scales (one expert each)")
    parser.add_argument("--dim", type=int, default=512, help="scale feature and expert output size (the seed's 512)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--whole", action="store_true", help="time the family's whole training step")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(0)

    if args.whole:
        scales = [4 * 2**i for i in range(args.experts)]
        config = MultiScaleMoEConfig(scales=scales, dropout=0.0)
        network = MultiScaleMoEReID(config, 100, ("rgb",), (max(64, scales[-1]), max(32, scales[-1]))).to(device)
        images = torch.randn(args.batch, 1, 3, max(64, scales[-1]), max(32, scales[-1]), device=device)
        batch = (images, torch.ones(args.batch, 1, dtype=torch.bool, device=device),
                 torch.arange(args.batch, device=device) // 4)  # fmt: skip
        params = list(network.parameters())
        steps = {form: (lambda form=form: whole_step(network, batch, form == "batched")) for form in ("batched", "loop")}
        what = f"whole training step, {len(scales)} scales {scales}, batch {args.batch}"
    else:
        bank = ExpertBank(args.experts, args.dim, args.dim, 2 * args.dim, dropout=0.0).to(device)
        gate = MLPGate(args.experts * args.dim, args.experts, dropout=0.0).to(device)
        vectors = torch.randn(args.experts, args.batch, args.dim, device=device)
        params = [*bank.parameters(), *gate.parameters()]
        steps = {form: (lambda form=form: fusion_step(bank, gate, vectors, form == "batched")) for form in ("batched", "loop")}
        what = f"fusion of {args.experts} experts {args.dim} -> {2 * args.dim} -> {args.dim}, batch {args.batch}"

    # Agreement: outputs and every gradient, batched vs loop.
    grads = {}
    for form, step in steps.items():
        for p in params:
            p.grad = None
        out = step()
        grads[form] = (out.detach().clone(), [p.grad.clone() if p.grad is not None else None for p in params])
    torch.testing.assert_close(grads["batched"][0], grads["loop"][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads["batched"][1], grads["loop"][1]):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)

    times: dict[str, list[float]] = {"batched": [], "loop": []}
    for _ in range(3):  # warm-up
        for step in steps.values():
            step()
    for _ in range(args.steps):
        for form, step in steps.items():  # alternating: both see the same machine state
            for p in params:
                p.grad = None
            times[form].append(timed(step, device))
    batched, loop = statistics.median(times["batched"]), statistics.median(times["loop"])
    print(f"{what} on {device} ({torch.get_num_threads()} threads), forward + backward, median of {args.steps}:")
    print(f"  batched (ExpertBank)   {batched * 1e3:8.2f} ms")
    print(f"  per-expert loop        {loop * 1e3:8.2f} ms")
    print(f"  loop / batched         {loop / batched:8.2f}x   (outputs and gradients agree)")


if __name__ == "__main__":
    main()

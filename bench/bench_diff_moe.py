"""Training throughput of the ``diff_moe`` network: the shared top-k dispatch of ``models.moe`` vs a per-expert loop.

One network, one set of weights: the ``diff_moe`` family's classification step (images paired with
their class texts, cross-entropy + the auxiliary losses, forward and backward; no optimiser step, so
the weights stay the same) is timed with every block's general experts dispatched by
:class:`~models.moe.MixtureOfExperts` (tokens grouped by expert in one gather, one ``index_add``)
and with the obvious loop written out (per expert: find its tokens, run it on them, add the
weighted result back), alternating step by step in the same run. Before timing, both dispatches
are checked to agree: eval-mode logits and losses, and the gradients of a training step with the
same dropout draws. The ratio is loop time / shared time (> 1: the shared dispatch is faster).

    python bench/bench_diff_moe.py                          # the family's CPU preset, cpu
    python bench/bench_diff_moe.py --experts 16             # a larger pool, still top-2
    python bench/bench_diff_moe.py --device cuda --batch 256 --preset seed
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from functools import partial

import torch

from harness.data.images import SYNTHETIC_CLASSES
from harness.runtime import resolve_device
from models.diff_moe import DiffMoEClassifier, DiffMoEClassifierModule, DiffMoEFamilyConfig
from models.diff_moe_network import DiffMoEConfig, DiffMoENetwork
from models.moe import MixtureOfExperts

SIZE_FIELDS = ("embed_dim", "expert_hidden_dim", "num_heads", "img_encoder_layers", "text_encoder_layers",
               "fusion_layers", "text_embed_dim", "dropout", "attention_dropout")  # what the CPU preset shrinks
SEED_SIZE = {f.name: f.default for f in dataclasses.fields(DiffMoEConfig) if f.name in SIZE_FIELDS}


def per_expert_loop(moe: MixtureOfExperts, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each expert on the tokens routed to it, one expert after another."""
    out = tokens.new_zeros(tokens.shape[0], moe.out_dim)
    for e, expert in enumerate(moe.experts):
        index = weights[:, e].nonzero().squeeze(1)
        out = out.index_add(0, index, weights[index, e : e + 1] * expert(tokens[index]))
    return out


@contextlib.contextmanager
def looped(module: torch.nn.Module):
    """Every sparse MixtureOfExperts in ``module`` dispatches with :func:`per_expert_loop` inside the block."""
    mixtures = [m for m in module.modules() if isinstance(m, MixtureOfExperts) and m.sparse]
    for moe in mixtures:
        moe._sparse = partial(per_expert_loop, moe)
    try:
        yield
    finally:
        for moe in mixtures:
            del moe._sparse  # back to the class's dispatch


def training_pass(module: DiffMoEClassifierModule, batch, seed: int = 0) -> torch.Tensor:
    """One forward and backward of the family's training step (dropout seeded); returns the loss."""
    torch.manual_seed(seed)
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch)
    loss.backward()
    return loss.detach()


def max_differences(module: DiffMoEClassifierModule, batch) -> dict[str, float]:
    """Largest |shared - loop| of the eval-mode logits and losses and of a training step's gradients."""
    images, labels = batch
    outputs = {}
    for name, context in (("shared", contextlib.nullcontext()), ("loop", looped(module))):
        with context:
            module.eval()
            with torch.no_grad():
                out = module.net(images, class_tokens=module.class_tokens, paired_class=labels)
            module.train()
            loss = training_pass(module, batch)
            grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        outputs[name] = (out.logits, out.aux["aux_loss"], loss, grads)
    labels_ = ("logits", "aux_loss", "train_loss", "gradients")
    return {k: float((a - b).abs().max()) for k, a, b in zip(labels_, outputs["shared"], outputs["loop"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "seed"),
                        help="cpu: the family's defaults; seed: the seed's full-size network")  # fmt: skip
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--experts", type=int, default=4, help="general experts per block (top-2 routed)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per dispatch (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    # Setup: the family's network for 32×32 RGB images and the embedded data's ten class texts
    family = DiffMoEFamilyConfig(**(SEED_SIZE if args.preset == "seed" else {}), num_general_experts=args.experts)
    torch.manual_seed(0)
    network = DiffMoENetwork(family.network(32, 3, len(SYNTHETIC_CLASSES)))
    texts = [text for *_, text in SYNTHETIC_CLASSES]
    class_tokens = DiffMoEClassifier(family).tokenize(texts)
    module = DiffMoEClassifierModule(network, class_tokens).to(device).train()
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(args.batch, 3, 32, 32, generator=generator).to(device),
             torch.randint(0, len(texts), (args.batch,), generator=generator).to(device))  # fmt: skip

    # Agreement
    differences = max_differences(module, batch)

    # Timing: alternate the two dispatches step by step, after two warm-up steps each
    def sync() -> None:
        if batch[0].is_cuda:
            torch.cuda.synchronize(batch[0].device)

    times: dict[str, list[float]] = {"shared": [], "loop": []}
    for step in range(args.repeats + 2):
        for name in times:
            with looped(module) if name == "loop" else contextlib.nullcontext():
                sync()
                started = time.perf_counter()
                training_pass(module, batch, seed=step)
                sync()
            if step >= 2:
                times[name].append(time.perf_counter() - started)

    n_params = sum(p.numel() for p in module.parameters())
    print(f"diff_moe training step (forward + backward), {args.preset} preset ({n_params / 1e6:.1f} M parameters, "
          f"{family.num_general_experts} general experts, top-{family.top_k}), batch {args.batch} of 32x32x3, "
          f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.repeats}")  # fmt: skip
    seconds = {name: statistics.median(values) for name, values in times.items()}
    for name, label in (("shared", "models.moe shared dispatch"), ("loop", "per-expert Python loop")):
        print(f"  {label:<28} {1000 * seconds[name]:8.1f} ms/step  {args.batch / seconds[name]:8.1f} images/s")
    print(f"  ratio loop / shared: {seconds['loop'] / seconds['shared']:.2f}x")
    print("  max |shared - loop|: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))


if __name__ == "__main__":
    main()

"""Forward and forward+backward time of ``MixtureOfExperts`` vs a plain Python loop over experts.

The reference is the definition written out: a loop over experts, each run on every token and
multiplied by its routing weight (for top-k the weights are 0 off the selected experts, so this is
the mask-multiply reference). Both sides share the module's gate and expert parameters and are
timed in the same run; the ratio is reference / MixtureOfExperts. The ``alt`` column times the
path ``MixtureOfExperts`` did not take: for dense routing the other ``dense_impl`` form, for
top-k a naive sparse dispatch (``nonzero`` per expert, then ``index_add``). ``max |Δ|`` is the
largest difference from the reference's output.

    python bench/bench_moe.py                          # cuda if available, else cpu
    python bench/bench_moe.py --device cpu --repeats 20 --tokens 16384
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from harness.runtime import resolve_device
from models.moe import MixtureOfExperts


def loop_reference(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted and summed in a Python loop."""
    weights = moe.gate(x).weights
    out = 0
    for e, expert in enumerate(moe.experts):
        out = out + weights[:, e : e + 1] * expert(x)
    return out


def naive_dispatch(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Top-k written the obvious way: find each expert's tokens, run it on them, add back."""
    weights = moe.gate(x).weights
    out = x.new_zeros(x.shape[0], moe.out_dim)
    for e, expert in enumerate(moe.experts):
        index = weights[:, e].nonzero().squeeze(1)
        out = out.index_add(0, index, weights[index, e : e + 1] * expert(x[index]))
    return out


def moe_output(moe: MixtureOfExperts, x: torch.Tensor, dense_impl: str = "auto") -> torch.Tensor:
    """``moe(x).output``, with the dense form forced to ``dense_impl`` for this call."""
    moe.dense_impl = dense_impl
    try:
        return moe(x).output
    finally:
        del moe.dense_impl  # back to the class default, "auto"


def median_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool, repeats: int) -> float:
    """Median milliseconds per call after two warm-up calls; forward only under no_grad."""

    def call() -> None:
        if backward:
            fn(x).sum().backward()
        else:
            with torch.no_grad():
                fn(x)

    def sync() -> None:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    times = []
    for i in range(repeats + 2):
        sync()
        start = time.perf_counter()
        call()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def warm_up(device: str, dim: int, tokens: int, seconds: float = 1.0) -> None:
    """Run every path for a while first: the first timings of a process (thread pool, allocator) run slow."""
    moe = MixtureOfExperts(dim, dim, 4).to(device)
    x = torch.randn(tokens, dim, device=device)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for top_k in (None, 2):
            moe.gate.top_k = top_k
            for fn in (moe_output, loop_reference, naive_dispatch):
                fn(moe, x).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median reported)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dims", default="128,256", help="in = hidden = out dims to try")
    parser.add_argument("--experts", default="3,8", help="expert counts to try")
    parser.add_argument("--top-k", default="none,2", help="top_k values to try; none = dense")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dims = [int(v) for v in args.dims.split(",")]
    experts = [int(v) for v in args.experts.split(",")]
    top_ks = [None if v.lower() == "none" else int(v) for v in args.top_k.split(",")]

    print(f"MixtureOfExperts vs Python loop over experts: {args.tokens} tokens, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats}")  # fmt: skip
    warm_up(device, max(dims), args.tokens)
    header = f"{'dim':>4} {'E':>2} {'top_k':>5} {'pass':>8} | {'reference':>10} {'MoE':>9} {'speedup':>7} | "
    header += f"{'alt':>28} | {'max |Δ|':>8}"
    print(header)
    print("-" * len(header))
    for dim, n_experts, top_k in itertools.product(dims, experts, top_ks):
        torch.manual_seed(0)
        moe = MixtureOfExperts(dim, dim, n_experts, top_k=top_k).to(device)
        x = torch.randn(args.tokens, dim, device=device)
        ours, reference = partial(moe_output, moe), partial(loop_reference, moe)
        if moe.sparse:
            alt_name, alt = "naive dispatch", partial(naive_dispatch, moe)
        else:
            other = "per_expert" if x.is_cuda else "concat"  # the form "auto" does not pick here
            alt_name, alt = f"dense {other}", partial(moe_output, moe, dense_impl=other)
        with torch.no_grad():
            error = float((ours(x) - reference(x)).abs().max())
        for backward in (False, True):
            ref_ms, our_ms, alt_ms = (median_ms(fn, x, backward, args.repeats) for fn in (reference, ours, alt))
            moe.zero_grad(set_to_none=True)
            alt_text = f"{alt_name} {alt_ms:7.2f} ms"
            print(f"{dim:>4} {n_experts:>2} {top_k!s:>5} {'fwd+bwd' if backward else 'fwd':>8} | "
                  f"{ref_ms:7.2f} ms {our_ms:6.2f} ms {ref_ms / our_ms:6.2f}x | {alt_text:>28} | {error:8.1e}")  # fmt: skip


if __name__ == "__main__":
    main()

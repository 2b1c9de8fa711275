"""``rqvae_t5`` decoding and RQ-VAE training, against their peers in the same run.

**Decoding** (users/s): the family's batched beam search (:func:`models.rqvae_t5.seq2seq.beam_search`,
constraints as automata) under the prefix trie, the seed's successor table and no constraint,
and transformers' ``generate(num_beams=..., prefix_allowed_tokens_fn=...)`` under the trie and
the table (the peer: what MQL4GRec calls) and unconstrained. Same T5 (the family's CPU default
size, random weights), same inputs (histories of 20 items), same catalogue of unique random code
tuples; each line also counts the beams that are no item. Before timing, the batched search is
checked to return the same beams and scores as ``generate`` under the trie.

**RQ-VAE** (seconds per epoch): one pass of training steps (forward, loss, backward, AdamW) over
the same embeddings with :class:`models.rqvae_t5.rqvae.RQVAE`, with and without the last level's
Sinkhorn-Knopp, and with MQL4GRec's own ``index/models/rqvae.py`` when ``--mql4grec`` names a
checkout of github.com/zhaijianyang/MQL4GRec (read there, not installed; needs scikit-learn).

    python bench/bench_generative_rec.py                          # 256 users, 1500 items, 20 beams, cpu
    python bench/bench_generative_rec.py --users 1024 --items 10000 --mql4grec ../MQL4GRec
    python bench/bench_generative_rec.py --device cuda --users 4096
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from harness.runtime import resolve_device
from models.rqvae_t5.codes import all_code_tokens, code_tokens
from models.rqvae_t5.rqvae import RQVAE, RQVAEConfig
from models.rqvae_t5.seq2seq import Automaton, CodeVocabulary, _pad_right, beam_search, build_t5, build_tokenizer
from models.rqvae_t5.trie import CodeTrie, SuccessorTable


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def generate(t5, inputs, levels: int, beams: int, constraint, pad: int, batch: int) -> np.ndarray:
    """The peer: transformers' beam search, ``prefix_allowed_tokens_fn`` called per beam and step."""
    out = []
    for start in range(0, len(inputs), batch):
        ids, mask = _pad_right(inputs[start : start + batch], pad)
        sequences = t5.generate(input_ids=ids.to(t5.device), attention_mask=mask.to(t5.device), num_beams=beams,
                                num_return_sequences=beams, max_new_tokens=levels + 1, min_new_tokens=levels,
                                prefix_allowed_tokens_fn=constraint, length_penalty=0.0, do_sample=False,
                                return_dict_in_generate=True, output_scores=True)  # fmt: skip
        out.append(sequences.sequences[:, 1 : levels + 1].cpu().numpy().reshape(len(ids), beams, levels))
    return np.concatenate(out)


def decoding(args, device: torch.device) -> None:
    rng = np.random.default_rng(0)
    levels, size = 4, 256
    codes = np.unique(rng.integers(0, size, (args.items * 2, levels)), axis=0)
    codes = codes[rng.permutation(len(codes))[: args.items]]
    tokenizer = build_tokenizer(all_code_tokens("abcd", size))
    vocabulary = CodeVocabulary.from_tokenizer(tokenizer, {"text": code_tokens(codes, "abcd")})
    t5 = build_t5(tokenizer, d_model=64, d_ff=128, num_layers=2, num_heads=4, dropout=0.0).to(device).eval()
    inputs = [vocabulary.history_input("seqrec", rng.integers(1, args.items + 1, 20), 20) for _ in range(args.users)]
    trie = CodeTrie(vocabulary.codes["text"][1:], vocabulary.eos)
    table = SuccessorTable(vocabulary.codes["text"][1:], vocabulary.eos)
    automata = {"trie": Automaton.from_transitions(*trie.transitions()),
                "table": Automaton.from_transitions(*table.transitions()),
                "none": Automaton.unconstrained(len(tokenizer), vocabulary.pad)}  # fmt: skip

    def ours(name):
        return beam_search(t5, inputs, levels, args.beams, automata[name], eos=vocabulary.eos, pad=vocabulary.pad,
                           device=device, batch_size=args.batch)[0]  # fmt: skip

    check = slice(0, min(32, args.users))
    mine = beam_search(t5, inputs[check], levels, args.beams, automata["trie"], eos=vocabulary.eos,
                       pad=vocabulary.pad, device=device, batch_size=args.batch)[0]  # fmt: skip
    peer = generate(t5, inputs[check], levels, args.beams, trie, vocabulary.pad, args.batch)
    same = np.mean([{tuple(b) for b in x} == {tuple(b) for b in y} for x, y in zip(mine, peer)])
    print(f"decoding: {args.users} users, {args.items} items (4 x 256 codes), {args.beams} beams, T5 "
          f"{sum(p.numel() for p in t5.parameters()) / 1e6:.2f}M, {device}; same beams as generate on "
          f"{same:.0%} of {len(mine)} checked users")  # fmt: skip
    runs = {f"batched, {name}": (lambda name=name: ours(name)) for name in automata}
    runs.update({"generate, trie": lambda: generate(t5, inputs, levels, args.beams, trie, vocabulary.pad, args.batch),
                 "generate, table": lambda: generate(t5, inputs, levels, args.beams, table, vocabulary.pad, args.batch),
                 "generate, none": lambda: generate(t5, inputs, levels, args.beams, None, vocabulary.pad, args.batch)})  # fmt: skip
    results = {name: timed(fn, args.repeats) for name, fn in runs.items()}
    reference = results["generate, trie"][0]
    print(f"{'search, constraint':<20} {'users/s':>9} {'x generate+trie':>16} {'beams that are no item':>24}")
    for name, (seconds, beams) in results.items():
        invalid = trie.count_invalid(beams.reshape(-1, levels))
        print(f"{name:<20} {args.users / seconds:9.1f} {reference / seconds:16.2f} "
              f"{invalid:>10} of {beams.size // levels} ({invalid / (beams.size // levels):.0%})")  # fmt: skip


def load_mql4grec(checkout: Path):
    """MQL4GRec's ``index/models`` as a package of its own (its code, read from the checkout)."""
    folder = checkout / "index" / "models"
    if not (folder / "rqvae.py").is_file():
        raise SystemExit(f"--mql4grec: {folder / 'rqvae.py'} not found; pass a checkout of MQL4GRec.")
    spec = importlib.util.spec_from_file_location("mql4grec_models", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])  # fmt: skip
    package = importlib.util.module_from_spec(spec)
    sys.modules["mql4grec_models"] = package
    if (folder / "__init__.py").exists():
        spec.loader.exec_module(package)
    return importlib.import_module("mql4grec_models.rqvae").RQVAE


def rqvae_epochs(args, device: torch.device) -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(args.items, args.dim)).astype(np.float32)).to(device)
    hidden, batch = [512, 256, 128, 64], 1024
    models = {}
    for name, epsilons in (("ours, SK on last level", [0.0, 0.0, 0.0, 0.003]), ("ours, no SK", [0.0] * 4)):
        config = RQVAEConfig(hidden_dims=hidden, sk_epsilons=epsilons)
        model = RQVAE(args.dim, config).to(device)
        model.init_codebooks(x, torch.Generator(device="cpu").manual_seed(0))
        models[name] = (model, lambda m, xb: m.loss(xb)[0])
    if args.mql4grec:
        peer_cls = load_mql4grec(Path(args.mql4grec))
        peer = peer_cls(in_dim=args.dim, num_emb_list=[256] * 4, e_dim=32, layers=hidden, kmeans_init=True,
                        kmeans_iters=100, sk_epsilons=[0.0, 0.0, 0.0, 0.003], sk_iters=50).to(device)  # fmt: skip
        peer(x[:batch])  # its k-means initialisation happens on the first batch
        models["MQL4GRec, SK on last level"] = (peer, lambda m, xb: m.compute_loss(*m(xb)[:2], xs=xb)[0])

    def epoch(model, loss_fn, optimizer):
        model.train()
        for start in range(0, len(x), batch):
            optimizer.zero_grad()
            loss_fn(model, x[start : start + batch]).backward()
            optimizer.step()

    print(f"\nRQ-VAE: {args.items} items x {args.dim}-d, encoder {hidden} -> 32, 4 x 256 codes, batch {batch}, {device}")
    results = {}
    for name, (model, loss_fn) in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        epoch(model, loss_fn, optimizer)  # warm-up
        results[name] = timed(lambda: epoch(model, loss_fn, optimizer), args.repeats)[0]
    reference = results.get("MQL4GRec, SK on last level", results["ours, no SK"])
    label = "x MQL4GRec" if args.mql4grec else "x ours, no SK"
    print(f"{'model':<28} {'s/epoch':>9} {label:>14}")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds:9.3f} {reference / seconds:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="users per beam search call")
    parser.add_argument("--dim", type=int, default=384, help="embedding width for the RQ-VAE part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mql4grec", help="a checkout of MQL4GRec, to time its RQ-VAE as the peer")
    args = parser.parse_args()
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(0)
    decoding(args, device)
    rqvae_epochs(args, device)


if __name__ == "__main__":
    main()

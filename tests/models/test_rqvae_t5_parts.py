"""The rqvae_t5 building blocks: RQ-VAE, collision resolution, tokens and index files, decoding constraints."""

import json

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from models.rqvae_t5.codes import (
    all_code_tokens,
    code_tokens,
    level_letters,
    read_index,
    resolve_collisions,
    write_index,
)
from models.rqvae_t5.rqvae import RQVAEConfig, VectorQuantizer, train_rqvae
from models.rqvae_t5.trie import CodeTrie, SuccessorTable

# ---------------------------------------------------------------------------------------------
# Collision resolution
# ---------------------------------------------------------------------------------------------


def test_twenty_items_on_one_tuple_take_the_next_tuples_in_order():
    # Every item ranks the codes of every level 0 < 1 < 2 < 3; item 19 is nearest its last code.
    n, k, levels = 20, 4, 3
    codes = np.zeros((n, levels), dtype=int)
    distances = [np.tile(np.arange(k, dtype=float), (n, 1)) for _ in range(levels)]
    distances[-1][:, 0] = (n - np.arange(n)) / 100

    resolved, report = resolve_collisions(codes, distances)

    # Movers go nearest first (18, 17, ..., 0) and take the tuples after (0, 0, 0) in
    # lexicographic order: the last level until it runs out under (0, 0), then the level above.
    expected = np.stack(np.unravel_index(n - 1 - np.arange(n), (k,) * levels), axis=1)
    np.testing.assert_array_equal(resolved, expected)
    assert resolved[15].tolist() == [0, 1, 0]  # (0, 0, *) was full: level 1 moved, level 2 re-picked
    assert report == {
        "items": 20,
        "collided_items": 20,
        "collision_rate_before": pytest.approx(0.95),
        "collision_rate_after": 0.0,
        "items_moved": 19,
        "changed_per_level": [4, 12, 15],
        "mean_rank_per_level": [1.0, 2.0, 2.0],
    }


def test_an_exhausted_last_level_moves_the_level_above_to_its_next_nearest_code():
    # (0, *) is full, so item 3 (farther from <last 0> than item 0) changes level 0 to its
    # next-nearest code 2, then re-picks level 1 nearest first: (2, 0) is taken, (2, 2) is free.
    codes = np.array([[0, 0], [0, 1], [0, 2], [0, 0], [2, 0]])
    level0, level1 = np.zeros((5, 3)), np.zeros((5, 3))
    level1[0] = [0.1, 1.0, 1.0]
    level0[3], level1[3] = [0.0, 0.9, 0.5], [0.2, 0.8, 0.3]

    resolved, report = resolve_collisions(codes, [level0, level1])

    assert resolved.tolist() == [[0, 0], [0, 1], [0, 2], [2, 2], [2, 0]]
    assert report["items_moved"] == 1
    assert report["changed_per_level"] == [1, 1]
    assert report["mean_rank_per_level"] == [1.0, 1.0]


def test_equal_distances_leave_the_tuple_to_the_lower_item_index():
    codes = np.array([[1, 1], [1, 1]])
    distances = [np.zeros((2, 2)), np.zeros((2, 2))]
    resolved, _ = resolve_collisions(codes, distances)
    assert resolved.tolist() == [[1, 1], [1, 0]]


def test_crowded_random_codes_become_unique_deterministically_and_keepers_stay():
    rng = np.random.default_rng(0)
    n, k, levels = 64, 4, 3  # exactly fills the code space
    codes = rng.integers(0, 2, size=(n, levels))
    distances = [rng.random((n, k)) for _ in range(levels)]

    resolved, report = resolve_collisions(codes, distances)
    again, _ = resolve_collisions(codes, distances)

    assert len(np.unique(resolved, axis=0)) == n
    np.testing.assert_array_equal(resolved, again)
    tuples = [tuple(row) for row in codes.tolist()]
    unchanged = np.flatnonzero((resolved == codes).all(axis=1))
    assert len(unchanged) == len(set(tuples)) == n - report["items_moved"]  # one keeper per distinct tuple
    assert report["collision_rate_after"] == 0.0


def test_more_items_than_code_tuples_is_an_error():
    codes = np.zeros((5, 2), dtype=int)
    with pytest.raises(HarnessError, match=r"5 items cannot each have their own code tuple among the 4 that 2 levels"):
        resolve_collisions(codes, [np.zeros((5, 2)), np.zeros((5, 2))])


def test_codes_outside_the_distance_columns_are_an_error():
    with pytest.raises(HarnessError, match=r"codes at level 1 must lie in 0\.\.1"):
        resolve_collisions(np.array([[0, 2]]), [np.zeros((1, 2)), np.zeros((1, 2))])


# ---------------------------------------------------------------------------------------------
# Tokens and index files
# ---------------------------------------------------------------------------------------------


def test_code_tokens_follow_mql4grec_letters():
    assert level_letters("text", 4) == "abcd" and level_letters("image", 4) == "ABCD"
    assert code_tokens(np.array([[12, 3, 7, 200]]), "abcd") == [["<a_12>", "<b_3>", "<c_7>", "<d_200>"]]
    assert code_tokens(np.array([[12, 3, 7, 200]]), "ABCD") == [["<A_12>", "<B_3>", "<C_7>", "<D_200>"]]
    assert all_code_tokens("ab", 2) == ["<a_0>", "<a_1>", "<b_0>", "<b_1>"]


def test_index_round_trip_in_mql4grec_format(tmp_path):
    codes = np.array([[0, 1, 2, 3], [255, 0, 0, 0], [0, 1, 2, 4]])
    path = write_index(tmp_path / "Toy.index_lemb.json", codes, "abcd")
    assert json.loads(path.read_text()) == {
        "0": ["<a_0>", "<b_1>", "<c_2>", "<d_3>"],
        "1": ["<a_255>", "<b_0>", "<c_0>", "<d_0>"],
        "2": ["<a_0>", "<b_1>", "<c_2>", "<d_4>"],
    }
    np.testing.assert_array_equal(read_index(path, 3, 256, "abcd"), codes)


def test_write_index_refuses_duplicate_tuples_and_writes_nothing(tmp_path):
    path = tmp_path / "Toy.index_lemb.json"
    with pytest.raises(HarnessError, match=r"items 0 and 2 share the code tuple \['<a_1>', '<b_1>'\]"):
        write_index(path, np.array([[1, 1], [1, 2], [1, 1]]), "ab")
    assert list(tmp_path.iterdir()) == []


GOOD = {"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<b_3>"], "2": ["<a_0>", "<b_0>"]}


@pytest.mark.parametrize(
    "entries, message",
    [
        ({**GOOD, "3": ["<a_2>", "<b_2>"]}, r"names unknown item '3'; expected item indices '0' to '2' \(0-based"),
        ({"00": GOOD["0"], "1": GOOD["1"], "2": GOOD["2"]}, r"names unknown item '00'"),
        ({"0": GOOD["0"], "1": GOOD["1"]}, r"has no codes for item '2' \(1 of 3 items missing\)"),
        ({**GOOD, "2": ["<a_1>", "<b_2>"]}, r"items '0' and '2' share the code tuple \['<a_1>', '<b_2>'\]"),
        ({**GOOD, "1": ["<a_1>", "<x_3>"]}, r"item '1': token 2 is '<x_3>', expected the form '<b_N>'"),
        ({**GOOD, "1": ["<b_1>", "<b_3>"]}, r"item '1': token 1 is '<b_1>', expected the form '<a_N>'"),
        ({**GOOD, "1": ["<a_1>", "<b_03>"]}, r"item '1': token 2 is '<b_03>'"),
        ({**GOOD, "1": ["<a_1>", "<b_16>"]}, r"item '1': token '<b_16>' is outside the codebook \(codes 0 to 15\)"),
        ({**GOOD, "1": ["<a_1>", "<b_3>", "<c_0>"]}, r"item '1': expected a list of 2 code tokens like"),
        ({**GOOD, "1": "<a_1><b_3>"}, r"item '1': expected a list of 2 code tokens"),
        ([GOOD["0"]], r"must be a JSON object mapping item indices to code tokens, got list"),
    ],
)
def test_read_index_names_the_file_the_item_and_what_was_expected(tmp_path, entries, message):
    path = tmp_path / "Toy.index_lemb.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(HarnessError, match=r"^Index file '.*Toy\.index_lemb\.json'.*" + message):
        read_index(path, 3, 16, "ab")


def test_read_index_rejects_a_missing_or_broken_file(tmp_path):
    with pytest.raises(HarnessError, match=r"Toy\.index_lemb\.json' does not exist\.$"):
        read_index(tmp_path / "Toy.index_lemb.json", 3, 16, "ab")
    (tmp_path / "Toy.index_lemb.json").write_text('{"0": ["<a_1>",')
    with pytest.raises(HarnessError, match=r"Toy\.index_lemb\.json' is not valid JSON"):
        read_index(tmp_path / "Toy.index_lemb.json", 3, 16, "ab")


# ---------------------------------------------------------------------------------------------
# Decoding constraints
# ---------------------------------------------------------------------------------------------

EOS = 1


def _token_id(level: int, code: int) -> int:
    return 10 + 10 * level + code


def _walk(constraint, max_len: int) -> list[tuple[int, ...]]:
    """Every tuple the constraint lets a decoder finish with EOS (brute force over all paths)."""
    finished, stack = [], [()]
    while stack:
        prefix = stack.pop()
        assert len(prefix) <= max_len, f"the constraint allows an endless path {prefix}"
        for token in constraint.allowed(list(prefix)):
            if token == EOS:
                finished.append(prefix)
            else:
                stack.append(prefix + (token,))
    return sorted(finished)


def test_every_path_the_trie_allows_is_an_item_and_every_item_is_a_path():
    rng = np.random.default_rng(0)
    space = [(a, b, c) for a in range(3) for b in range(3) for c in range(3)]
    chosen = [space[i] for i in rng.choice(len(space), size=10, replace=False)]
    items = [tuple(_token_id(level, code) for level, code in enumerate(row)) for row in chosen]
    trie = CodeTrie(items, EOS)

    assert _walk(trie, 3) == sorted(items)
    assert [trie.item_of(list(ids) + [EOS, 0]) for ids in items] == list(range(10))
    assert trie.count_invalid(_walk(trie, 3)) == 0
    prefix = list(items[4][:2])
    assert (
        trie(0, torch.tensor([0, *prefix]))
        == trie.allowed(prefix)
        == sorted(ids[2] for ids in items if list(ids[:2]) == prefix)
    )
    assert trie.allowed(list(items[4])) == [EOS]  # EOS only after a full tuple
    assert trie.allowed([]) == sorted({ids[0] for ids in items})


def test_the_successor_table_admits_tuples_that_are_no_item():
    items = [(11, 21, 31), (12, 21, 32)]  # (a1, b1, c1) and (a2, b1, c2)
    table, trie = SuccessorTable(items, EOS), CodeTrie(items, EOS)

    table_paths = _walk(table, 3)
    assert table_paths == [(11, 21, 31), (11, 21, 32), (12, 21, 31), (12, 21, 32)]
    assert table.allowed([11, 21]) == [31, 32] and trie.allowed([11, 21]) == [31]
    assert table.count_invalid(table_paths) == 2
    assert table.item_of([11, 21, 32]) is None and table.item_of([12, 21, 32, EOS]) == 1
    assert _walk(trie, 3) == sorted(items)


def test_constraints_build_from_tokens_and_a_vocabulary():
    tokens = code_tokens(np.array([[0, 1], [1, 0]]), "ab")
    vocab = {token: 100 + i for i, token in enumerate(all_code_tokens("ab", 2))}
    trie = CodeTrie.from_tokens(tokens, vocab, EOS)
    assert trie.item_of([vocab["<a_1>"], vocab["<b_0>"]]) == 1
    with pytest.raises(ValueError, match=r"Token '<b_1>' is not in the vocabulary"):
        CodeTrie.from_tokens([["<a_0>", "<b_1>"]], {"<a_0>": 5}, EOS)


def test_trie_constrained_beam_search_of_a_t5_yields_only_items():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=48, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS)  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    items = [tuple(_token_id(level, code) for level, code in enumerate(row))
             for row in [(0, 0, 0), (0, 1, 2), (1, 1, 1), (2, 0, 3), (2, 2, 2), (3, 3, 0)]]  # fmt: skip
    trie = CodeTrie(items, EOS)

    output = model.generate(torch.tensor([[5, 6, 7, EOS], [8, 9, 5, EOS]]), num_beams=4, num_return_sequences=4,
                            max_new_tokens=4, prefix_allowed_tokens_fn=trie, do_sample=False)  # fmt: skip

    assert output.shape == (8, 5) and (output[:, -1] == EOS).all()
    assert trie.count_invalid(output[:, 1:]) == 0
    for user in range(2):
        assert len({trie.item_of(row) for row in output[4 * user : 4 * user + 4, 1:]}) == 4


# ---------------------------------------------------------------------------------------------
# RQ-VAE
# ---------------------------------------------------------------------------------------------

TINY = {"hidden_dims": [32], "e_dim": 4, "num_levels": 3, "codebook_size": 8, "sk_epsilons": [0.0, 0.0, 0.003],
        "epochs": 12, "batch_size": 50, "kmeans_iters": 20, "lr": 1e-2}  # fmt: skip


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 2
    return (centres[rng.integers(8, size=200)] + rng.normal(size=(200, 16)) * 0.3).astype(np.float32)


def test_rqvae_reconstruction_improves_and_every_epoch_is_reported(clustered):
    lines = []
    _, history = train_rqvae(clustered, RQVAEConfig(**TINY), progress=False, log=lines.append)
    assert [row["epoch"] for row in history] == list(range(1, 13))
    assert history[-1]["recon_loss"] < 0.5 * history[0]["recon_loss"]
    assert all(len(row["utilisation"]) == 3 and all(0 < u <= 1 for u in row["utilisation"]) for row in history)
    assert len(lines) == 12 and lines[0].startswith("rqvae epoch 1/12: loss ")


def test_rqvae_same_seed_same_codes_and_the_fewest_collisions_kept(clustered):
    state = torch.get_rng_state()
    model, history = train_rqvae(clustered, RQVAEConfig(**TINY), progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    torch.rand(3)  # and does not matter: the seed alone decides
    again, history_again = train_rqvae(clustered, RQVAEConfig(**TINY), progress=False)
    _, history_other = train_rqvae(clustered, RQVAEConfig(**TINY, seed=1), progress=False)

    x = torch.from_numpy(clustered)
    codes, distances = model.encode_codes(x)
    assert codes.shape == (200, 3) and codes.dtype == torch.long
    assert [d.shape for d in distances] == [(200, 8)] * 3
    assert torch.equal(codes, again.encode_codes(x)[0]) and history == history_again
    assert history_other != history

    best = min(history, key=lambda row: (row["collision_rate"], row["recon_loss"]))
    assert 1 - len(torch.unique(codes, dim=0)) / 200 == pytest.approx(best["collision_rate"])
    unique_codes, report = resolve_collisions(codes.numpy(), [d.numpy() for d in distances])
    assert len(np.unique(unique_codes, axis=0)) == 200
    assert report["collision_rate_before"] == pytest.approx(best["collision_rate"])


def test_sinkhorn_spreads_a_crowded_level_over_the_codebook():
    # 200 latents crowd around codeword 0 of 8 nearby codewords: nearest-code puts almost all on it.
    generator = torch.Generator().manual_seed(0)
    quantizer = VectorQuantizer(8, 4, sk_epsilon=0.003, sk_iters=50)
    codewords = torch.randn(8, 4, generator=generator) * 0.1
    with torch.no_grad():
        quantizer.codebook.weight.copy_(codewords)
    z = codewords[0] + torch.randn(200, 4, generator=generator) * 0.03

    def shares(codes):
        return torch.bincount(codes, minlength=8) / len(codes)

    nearest = shares(quantizer(z, use_sk=False)[2])
    balanced = shares(quantizer(z, use_sk=True)[2])

    def entropy(p):
        return -(p[p > 0] * p[p > 0].log()).sum().item()

    assert nearest.max() >= 0.95 and balanced.max() <= 0.25
    assert entropy(balanced) > 1.8 and entropy(nearest) < 0.2  # uniform over 8 codes: 2.08
    plain = VectorQuantizer(8, 4, sk_epsilon=0.0)  # epsilon 0: nearest code even when Sinkhorn-Knopp is on
    assert torch.equal(plain(z, use_sk=True)[2], plain.distances(z).argmin(1))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sk_epsilons": [0.0, 0.003]}, r"^rqvae\.sk_epsilons must list one epsilon per level \(rqvae\.num_levels=3\)"),
        (
            {"sk_epsilons": [0.0, 0.001, 0.0]},
            r"^rqvae\.sk_epsilons must be 0 \(nearest code\) or finite numbers >= 0\.002",
        ),
        ({"codebook_size": 1}, r"^rqvae\.codebook_size must be an integer >= 2, got 1\.$"),
        ({"num_levels": 0, "sk_epsilons": []}, r"^rqvae\.num_levels must be a positive integer, got 0\.$"),
        ({"hidden_dims": [32, 0]}, r"^rqvae\.hidden_dims must be a list of positive integers, got \[32, 0\]\.$"),
        ({"lr": 0.0}, r"^rqvae\.lr must be a finite number > 0, got 0\.0\.$"),
    ],
)
def test_rqvae_config_errors_name_the_field(clustered, changes, message):
    with pytest.raises(HarnessError, match=message):
        train_rqvae(clustered, RQVAEConfig(**{**TINY, **changes}), progress=False)


def test_rqvae_embedding_errors(clustered):
    broken = clustered.copy()
    broken[3, 5] = np.nan
    with pytest.raises(HarnessError, match=r"^embeddings must be finite; row 3 holds NaN or inf\.$"):
        train_rqvae(broken, RQVAEConfig(**TINY), progress=False)
    with pytest.raises(
        HarnessError, match=r"^embeddings must be a non-empty 2-D array \[items, dim\], got \(200,\)\.$"
    ):
        train_rqvae(clustered[:, 0], RQVAEConfig(**TINY), progress=False)

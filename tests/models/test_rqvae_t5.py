"""The rqvae_t5 family: lists of real items, cached semantic IDs, the constraint report, bad input."""

import json

import numpy as np
import torch
import pytest

from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.metrics import get_metric
from harness.registry import FitContext, create_model
from harness.tasks.recommendation import TASK
from models.rqvae_t5.codes import read_index

pytestmark = pytest.mark.filterwarnings("ignore:RQVAET5 lists 8 items")

TINY = {"rqvae": {"hidden_dims": [32], "e_dim": 8, "num_levels": 3, "codebook_size": 8, "sk_epsilons": [0, 0, 0.003],
                  "epochs": 30, "batch_size": 64, "kmeans_iters": 10},
        "d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "num_beams": 8, "positions_per_user": 3,
        "text_dim": 16, "constraint_check_users": 8}  # fmt: skip


def _context(dataset, tmp_path, seed=0, epochs=2):
    return FitContext(dataset, get_metric("ndcg@10_full"), TrainConfig(epochs=epochs, batch_size=32, lr=3e-3,
                      progress=False), "cpu", seed, 0, tmp_path / "fold", tmp_path / "cache",
                      lambda logs, step: None, log=lambda message: None)  # fmt: skip


def _fit(dataset, tmp_path, params=None, seed=0):
    family = create_model("rqvae_t5", {**TINY, **(params or {})})
    train, valid = dataset.train.iloc[:90], dataset.train.iloc[90:]
    family.fit(train, valid, _context(dataset, tmp_path, seed))
    return family, valid


def test_lists_hold_unseen_real_items_and_repeat_with_the_seed(rec_dataset, tmp_path):
    family, valid = _fit(rec_dataset, tmp_path)
    prediction = family.predict(valid)
    assert prediction.sampled is None and prediction.items.shape == (len(valid), 8)
    for items, scores, history in zip(prediction.items, prediction.scores, valid["history"]):
        real = items[items != 0]
        assert len(real) >= 4 and not np.isin(real, history).any() and len(set(real)) == len(real)
        assert ((real >= 1) & (real < rec_dataset.meta["n_items"])).all()
        assert (np.diff(scores[items != 0]) <= 0).all()
    report = family.explain()
    for modality in ("text", "image"):
        assert report[f"decode/invalid_trie/{modality}"] == 0.0
        assert 0 <= report[f"decode/invalid_table/{modality}"] <= 1 and f"rqvae/{modality}/items_moved" in report
    again, _ = _fit(rec_dataset, tmp_path / "again")
    np.testing.assert_array_equal(again.predict(valid).items, prediction.items)
    assert np.isfinite(TASK.score(get_metric("ndcg@10_full"), rec_dataset, valid, prediction))


def test_semantic_ids_are_cached_once_and_written_as_mql4grec_index_files(rec_dataset, tmp_path):
    family, _ = _fit(rec_dataset, tmp_path, {"modalities": ["text"]})
    indexes = sorted((tmp_path / "cache").rglob("*.index_lemb.json"))
    assert len(indexes) == 1 and not list((tmp_path / "cache").rglob("*.index_vitemb.json"))
    codes = read_index(indexes[0], rec_dataset.meta["n_items"] - 1, 8, "abc")
    assert len(np.unique(codes, axis=0)) == len(codes)  # one tuple per item
    tokens = json.loads(indexes[0].read_text())
    assert tokens["0"] == [f"<{letter}_{code}>" for letter, code in zip("abc", codes[0])]
    entries = sorted(p.name for p in (tmp_path / "cache").glob("rqvae-text-*.pt"))
    _fit(rec_dataset, tmp_path, {"modalities": ["text"]}, seed=1)  # another fold seed: same codes, same entry
    assert sorted(p.name for p in (tmp_path / "cache").glob("rqvae-text-*.pt")) == entries
    assert family.list_length == 8 and set(family.decoders) == {"text"}


def test_supplied_embeddings_are_used_and_a_wrong_row_count_is_a_one_line_error(rec_dataset, tmp_path):
    n = rec_dataset.meta["n_items"] - 1
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, np.random.default_rng(0).normal(size=(n, 12)).astype(np.float32))
    np.save(bad, np.zeros((n + 3, 12), np.float32))
    family, valid = _fit(rec_dataset, tmp_path, {"modalities": ["text"], "text_embeddings": str(good)})
    assert family.predict(valid).items.shape == (len(valid), 8)
    with pytest.raises(HarnessError) as excinfo:
        _fit(rec_dataset, tmp_path, {"modalities": ["text"], "text_embeddings": str(bad)})
    message = str(excinfo.value)
    assert "model.text_embeddings" in message and "bad.npy" in message and f"[{n}, D]" in message
    assert "(63, 12)" in message and "\n" not in message


@pytest.mark.parametrize(("params", "needle"), [
    ({"modalities": ["audio"]}, "model.modalities"),
    ({"modalities": ["text"], "tasks": ["seqimage"]}, "model.tasks"),
    ({"tasks": ["item2image", "image2item"]}, "sequence task"),
    ({"d_model": 30, "num_heads": 4}, "model.d_model"),
    ({"alpha": 1.5}, "model.alpha"),
    ({"positions": "latest"}, "model.positions"),
    ({"rqvae": {"sk_epsilons": [0.0]}}, "model.rqvae.sk_epsilons"),
    ({"text_encoder": "no/such/dir"}, "model.text_encoder"),
])  # fmt: skip
def test_bad_settings_are_one_line_errors(params, needle):
    with pytest.raises(HarnessError, match=needle) as excinfo:
        create_model("rqvae_t5", params)
    assert "\n" not in str(excinfo.value)


def test_batched_beam_search_is_generate_with_the_trie_and_only_the_trie_yields_items_only():
    from models.rqvae_t5.codes import all_code_tokens, code_tokens
    from models.rqvae_t5.seq2seq import Automaton, CodeVocabulary, beam_search, build_t5, build_tokenizer
    from models.rqvae_t5.trie import CodeTrie, SuccessorTable

    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 6, (80, 3)), axis=0)[:60]
    tokenizer = build_tokenizer(all_code_tokens("abc", 6))
    vocabulary = CodeVocabulary.from_tokenizer(tokenizer, {"text": code_tokens(codes, "abc")})
    t5 = build_t5(tokenizer, d_model=16, d_ff=32, num_layers=1, num_heads=2, dropout=0.0, seed=3)
    trie = CodeTrie(vocabulary.codes["text"][1:], vocabulary.eos)
    inputs = [vocabulary.history_input("seqrec", rng.integers(1, 61, 12), 20) for _ in range(6)]
    ours, scores = beam_search(t5, inputs, 3, 10, Automaton.from_transitions(*trie.transitions()), eos=vocabulary.eos,
                               pad=vocabulary.pad, device=torch.device("cpu"))  # fmt: skip
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in inputs], batch_first=True)
    out = t5.generate(input_ids=ids, attention_mask=(ids != 0).long(), num_beams=10, num_return_sequences=10,
                      max_new_tokens=4, min_new_tokens=3, prefix_allowed_tokens_fn=trie, length_penalty=0.0,
                      do_sample=False, output_scores=True, return_dict_in_generate=True)  # fmt: skip
    theirs = out.sequences[:, 1:4].numpy().reshape(6, 10, 3)
    for row in range(6):
        assert {tuple(t) for t in ours[row]} == {tuple(t) for t in theirs[row]}
    np.testing.assert_allclose(scores, out.sequences_scores.numpy().reshape(6, 10), atol=1e-5)
    assert trie.count_invalid(ours.reshape(-1, 3)) == 0
    top3 = [np.array([trie.item_of(beam) for beam in row[:3]]) for row in ours]  # exclude each input's best 3
    kept, kept_scores = beam_search(t5, inputs, 3, 10, Automaton.from_transitions(*trie.transitions()),
                                    eos=vocabulary.eos, pad=vocabulary.pad, device=torch.device("cpu"), exclude=top3)  # fmt: skip
    assert np.isfinite(kept_scores).all()  # excluded subtrees are pruned early: every beam is still an item
    for row, before, banned in zip(kept, ours, top3):
        items = [trie.item_of(beam) for beam in row]
        assert not set(items) & set(banned.tolist())
        assert set(items) >= {trie.item_of(beam) for beam in before[3:]}  # the others stay, new ones fill up
    table = SuccessorTable(vocabulary.codes["text"][1:], vocabulary.eos)
    leaked, _ = beam_search(t5, inputs, 3, 10, Automaton.from_transitions(*table.transitions()), eos=vocabulary.eos,
                            pad=vocabulary.pad, device=torch.device("cpu"))  # fmt: skip
    assert trie.count_invalid(leaked.reshape(-1, 3)) > 0  # the seed's table admits tuples that are no item


def test_task_batches_hold_one_task_each_cover_every_pair_once_and_repeat_with_the_seed():
    from models.rqvae_t5.seq2seq import TaskBatches

    tasks = ["seqrec"] * 10 + ["item2image"] * 7 + ["seqimage"] * 5
    sampler = TaskBatches(tasks, batch_size=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 2
    assert all(len({tasks[i] for i in batch}) == 1 for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(len(tasks)))
    assert batches == list(TaskBatches(tasks, batch_size=4, seed=0)) and batches != list(sampler)  # next epoch differs


def test_each_epoch_trains_on_a_fixed_number_of_positions_per_sequence_drawn_anew_or_the_most_recent():
    from models.rqvae_t5.seq2seq import CodeVocabulary, Seq2SeqSamples

    codes = np.arange(2, 2 + 3 * 9).reshape(9, 3)  # item i + 1: three distinct tokens
    vocabulary = CodeVocabulary({"text": np.vstack([[0, 0, 0], codes])}, {"seqrec": 29, "item2image": 30}, eos=1, pad=0)
    sequences = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([8, 9]), np.array([3, 1, 4, 1, 5])]
    samples = Seq2SeqSamples(vocabulary, ["seqrec"], sequences, np.arange(1, 10), max_his_len=3)
    assert len(samples) == 6 + 1 + 4  # every position after the first of every sequence
    assert samples[0] == ([29, *codes[0], 1], [*codes[1], 1])  # history [1] → item 2
    assert samples[5] == ([29, *codes[3:6].ravel(), 1], [*codes[6], 1])  # the last 3 items of the history

    def epoch(sampler):
        return sorted((int(samples.rows[i, 1]), int(samples.rows[i, 2])) for batch in sampler for i in batch)

    recent = samples.batches(batch_size=4, positions_per_sequence=2, recent=True, seed=0)
    assert recent.rows_per_epoch == 2 + 1 + 2 and len(recent) == 2
    assert epoch(recent) == [(0, 5), (0, 6), (1, 1), (2, 3), (2, 4)] == epoch(recent)
    drawn = samples.batches(batch_size=4, positions_per_sequence=2, recent=False, seed=0)
    epochs = [epoch(drawn) for _ in range(6)]
    assert all(len(e) == 5 and sum(s == 0 for s, _ in e) == 2 and (1, 1) in e for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # a new draw each epoch
    again = samples.batches(batch_size=4, positions_per_sequence=2, recent=False, seed=0)
    assert [epoch(again) for _ in range(6)] == epochs  # the same seed, the same draws


def test_item_texts_hold_title_genres_and_description_and_the_decoder_output_is_unscaled_unless_asked(rec_dataset):
    from models.rqvae_t5.family import _item_texts
    from models.rqvae_t5.seq2seq import build_t5, build_tokenizer

    texts = _item_texts(rec_dataset, int(rec_dataset.meta["n_items"]))
    assert texts[0] == "Movie 1. Drama. a story number 1" and texts[1] == "Movie 2. Comedy. a story number 2"
    tokenizer = build_tokenizer(["<a_0>", "<a_1>"])
    sizes = {"d_model": 8, "d_ff": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0}
    plain, scaled = build_t5(tokenizer, **sizes), build_t5(tokenizer, **sizes, scale_decoder_output=True)
    inputs = {"input_ids": torch.tensor([[5, 6, 1]]), "decoder_input_ids": torch.tensor([[0, 5]])}
    torch.testing.assert_close(plain.eval()(**inputs).logits, scaled.eval()(**inputs).logits * 8**0.5)


@pytest.mark.filterwarnings("ignore:Beauty")  # the generator's items without meta or image, reported
def test_an_mql4grec_embedding_file_is_read_in_its_own_item_index_order(tmp_path):
    from harness.data.amazon import generate_amazon, read_amazon, read_mql4grec, write_mql4grec
    from models.rqvae_t5.family import item_embeddings

    generate_amazon(tmp_path / "amazon", n_users=60, n_items=30, mean_length=6)
    write_mql4grec(read_amazon(tmp_path / "amazon", min_user_interactions=3, min_item_interactions=1),
                   tmp_path / "Toy", "Toy")  # fmt: skip
    dataset = read_mql4grec(tmp_path / "Toy")
    items = dataset.meta["items"].sort_values("item_id")
    raw = items["raw_item_id"].astype(int).to_numpy()
    table = np.arange(int(raw.max()) + 1, dtype=np.float32)[:, None] * [1.0, -1.0]  # row r holds (r, -r)
    path = tmp_path / "Toy" / "Toy.emb-test.npy"
    np.save(path, table)
    family = create_model("rqvae_t5", {**TINY, "text_embeddings": str(path)})
    embeddings = item_embeddings(dataset, "text", family.config, _context(dataset, tmp_path))
    np.testing.assert_array_equal(embeddings[:, 0], raw)  # item id i (row i - 1) gets its index's row


def test_cross_validated_beside_popularity_on_one_fold_file_with_a_fused_ensemble(workdir, tmp_path):
    """The whole flow on a small MovieLens-format set: CV, test lists, submission, leaderboard, ensemble."""
    import pandas as pd

    from harness import ensemble
    from harness.cv import make_run_config, run_cv
    from harness.data.movielens import generate_movielens
    from harness.leaderboard import leaderboard

    generate_movielens(tmp_path / "ml", n_users=80, n_items=120, mean_length=20)
    runs = {
        model: run_cv(make_run_config(model, {"train": {"progress": False, "epochs": 2}, "threads_per_fold": 1},
                                      {"folds": 2, "seed": 5, "data": {"dir": str(tmp_path / "ml")}, "model": params}),
                      log=lambda m: None)
        for model, params in {"popularity": {}, "rqvae_t5": {**TINY, "num_beams": 20}}.items()
    }  # fmt: skip
    assert runs["popularity"]["fold_file"] == runs["rqvae_t5"]["fold_file"]
    result = runs["rqvae_t5"]
    assert 0 <= result["cv_ndcg@10_full_mean"] <= 1 and "test_ndcg@10_full" in result
    assert not any(key.endswith("_sampled") for key in result)  # a list family reports _full metrics only
    submission = pd.read_csv(result["submission"])
    assert list(submission.columns) == ["user_id", "items"] and len(submission) == 80
    assert submission["items"].str.split().map(len).between(1, 20).all()
    fused = ensemble.run_ensemble([runs["rqvae_t5"]["run_id"], runs["popularity"]["run_id"]], "rank_mean",
                                  log=lambda m: None)  # fmt: skip
    assert 0 <= fused["oof_ndcg@10_full"] <= 1
    board = leaderboard("movielens", log=lambda m: None)
    assert {"rqvae_t5", "popularity", "ensemble:rank_mean"} <= set(board["model"])


def test_a_pretrained_t5_directory_is_loaded_and_extended_with_the_code_tokens(rec_dataset, tmp_path):
    from models.rqvae_t5.seq2seq import build_t5, build_tokenizer

    tokenizer = build_tokenizer(["<a_0>", "<b_0>"])  # a vocabulary without most code tokens
    t5 = build_t5(tokenizer, d_model=32, d_ff=64, num_layers=1, num_heads=2, dropout=0.0)
    tokenizer.save_pretrained(tmp_path / "t5")
    t5.save_pretrained(tmp_path / "t5")
    family, valid = _fit(rec_dataset, tmp_path, {"modalities": ["text"], "t5_pretrained": str(tmp_path / "t5")})
    assert len(family.tokenizer) > len(tokenizer) and family.model.t5.config.vocab_size == len(family.tokenizer)
    assert family.predict(valid).items.shape == (len(valid), 8)
    with pytest.raises(HarnessError, match="model.t5_pretrained: could not load a tokenizer"):
        _fit(rec_dataset, tmp_path, {"modalities": ["text"], "t5_pretrained": str(tmp_path / "missing")})

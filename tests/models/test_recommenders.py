"""The sequential-recommendation families: contract, determinism, routing outputs, and the leaderboard claim."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from harness.config import TrainConfig
from harness.cv import make_run_config, run_cv
from harness.data.movielens import generate_movielens, read_movielens
from harness.errors import HarnessError
from harness.leaderboard import leaderboard
from harness.metrics import get_metric
from harness.tasks.recommendation import Recommendations, SequentialRecommender
from harness.registry import FitContext, create_model, get_model_entry, list_models
from harness.tasks import TaskType

RECOMMENDERS = [m for m in list_models() if get_model_entry(m).task == TaskType.SEQUENTIAL_RECOMMENDATION]
# families that score every item (list-decoding ones, rqvae_t5, have their own tests)
SCORERS = [m for m in RECOMMENDERS if isinstance(create_model(m), SequentialRecommender)]
TINY = {"sasrec": {"hidden_dim": 16, "n_blocks": 1, "max_len": 10}, "hier_moe_rec": {"hidden_dim": 16, "text_dim": 16}}


def _context(dataset, tmp_path, epochs=2, seed=0):
    train_config = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, progress=False)
    return FitContext(dataset, get_metric("ndcg@10_full"), train_config, "cpu", seed, 0, tmp_path / "fold",
                      tmp_path / "cache", lambda logs, step: None, log=lambda message: None)  # fmt: skip


def _fit(name, dataset, tmp_path, params=None, epochs=2, seed=0):
    family = create_model(name, {**TINY.get(name, {}), **(params or {})})
    train, valid = dataset.train.iloc[:90], dataset.train.iloc[90:]
    family.fit(train, valid, _context(dataset, tmp_path, epochs, seed))
    return family, valid


def test_four_recommenders_are_registered():
    assert {"popularity", "sasrec", "hier_moe_rec", "rqvae_t5"} <= set(RECOMMENDERS)
    assert {"popularity", "sasrec", "hier_moe_rec"} <= set(SCORERS) and "rqvae_t5" not in SCORERS


@pytest.mark.parametrize("name", SCORERS)
def test_recommendations_rank_unseen_items_and_are_deterministic(name, rec_dataset, tmp_path):
    family, valid = _fit(name, rec_dataset, tmp_path)
    prediction = family.predict(valid)
    assert isinstance(prediction, Recommendations) and prediction.items.shape == (len(valid), 50)
    assert prediction.sampled.shape == (len(valid), 101)
    for items, scores, history in zip(prediction.items, prediction.scores, valid["history"]):
        n_open = min(50, rec_dataset.meta["n_items"] - 1 - len(set(history)))  # the rest is padding
        assert not np.isin(items, history).any() and 0 not in items[:n_open] and not items[n_open:].any()
        assert (np.diff(scores[:n_open]) <= 0).all()
    again, _ = _fit(name, rec_dataset, tmp_path / "again")
    np.testing.assert_array_equal(again.predict(valid).items, prediction.items)


@pytest.mark.parametrize("name", RECOMMENDERS)
def test_search_space_gives_valid_configs(name):
    entry = get_model_entry(name)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = entry.search_space(trial)
    create_model(name, params.get("model"))
    assert set(params) <= {"model", "train"}


@pytest.mark.parametrize(("name", "param"), [("sasrec", {"n_heads": 3}), ("hier_moe_rec", {"temperature": 0.0}),
                                             ("popularity", {"window": -1})])  # fmt: skip
def test_bad_family_config_is_a_one_line_error(name, param):
    with pytest.raises(HarnessError, match=f"model.{next(iter(param))}"):
        create_model(name, param)


def test_sasrec_learns_a_sequential_pattern_popularity_cannot(rec_dataset, tmp_path):
    metric = get_metric("ndcg@10_full")
    from harness.tasks import get_task_adapter

    adapter = get_task_adapter(TaskType.SEQUENTIAL_RECOMMENDATION)
    scores = {}
    for name, epochs in (("popularity", 1), ("sasrec", 25)):
        family, valid = _fit(name, rec_dataset, tmp_path / name, epochs=epochs)
        scores[name] = adapter.score(metric, rec_dataset, valid, family.predict(valid))
    assert scores["sasrec"] > 0.5 and scores["sasrec"] > 2 * scores["popularity"], scores


# ---- the hierarchical MoE ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_movielens(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml") / "movielens"
    generate_movielens(root, n_users=100, n_items=150, mean_length=25)
    return read_movielens(root)


def test_hier_moe_routing_outputs_and_missing_posters(small_movielens, tmp_path):
    dataset = small_movielens
    has_poster = dataset.meta["items"]["poster_path"].notna()
    assert has_poster.any() and not has_poster.all()  # the generator leaves some posters out
    family, valid = _fit("hier_moe_rec", dataset, tmp_path)
    rows, history = family._inputs(valid.iloc[:8])
    out = family.model(rows, history)
    for key in ("user_sub_weights", "desc_sub_weights", "image_sub_weights"):
        weights = out[key]
        assert weights.shape[-1] == 3 and torch.allclose(weights.sum(-1), torch.ones(()))
    assert out["user_sub_weights"].shape == (8, 3)
    cross = out["cross_modal_weights"]  # [B, n_items, 3]: per user and item
    assert cross.shape == (8, dataset.meta["n_items"], 3)
    missing = dataset.meta["items"].loc[~has_poster, "item_id"].to_numpy()
    assert (cross[:, missing, 2] == 0).all()
    assert (cross[:, dataset.meta["items"].loc[has_poster, "item_id"].to_numpy(), 2] > 0).all()

    explained = family.explain()
    assert sum(explained[f"routing/cross_{m}"] for m in ("user", "desc", "image")) == pytest.approx(1.0)
    genres = {key.split("/")[1] for key in explained if key.startswith("routing_by_genre/")}
    assert genres and genres <= set(dataset.meta["genres"])
    assert {f"specialisation/{m}" for m in ("user", "desc", "image", "cross")} <= set(explained)


def test_hier_moe_without_any_poster_routes_over_text_only(small_movielens, tmp_path):
    items = small_movielens.meta["items"].assign(poster_path=None)
    dataset = dataclasses.replace(small_movielens, meta={**small_movielens.meta, "items": items})
    family, valid = _fit("hier_moe_rec", dataset, tmp_path, epochs=1)
    out = family.model(*family._inputs(valid.iloc[:4]))
    assert (out["cross_modal_weights"][..., 2] == 0).all()
    assert family.explain()["routing/cross_image"] == 0.0


def _tiny_bert(directory: Path, texts) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from models.text_encoder import tokenize_words

    words = sorted({w for t in texts for w in tokenize_words(t)})
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(directory)
    return directory


def test_hier_moe_with_a_local_transformers_text_encoder(rec_dataset, tmp_path):
    texts = list(rec_dataset.train["user_text"]) + list(rec_dataset.meta["items"]["description"])
    encoder = _tiny_bert(tmp_path / "bert", texts)
    family, valid = _fit("hier_moe_rec", rec_dataset, tmp_path, {"text_encoder": str(encoder)}, epochs=1)
    assert family.model.texts.features.shape[1] == 32
    assert list((tmp_path / "cache").glob("text-*.pt"))  # encoded once, cached for the next fold
    assert isinstance(family.predict(valid), Recommendations)
    with pytest.raises(HarnessError, match="Could not load text encoder"):
        _fit("hier_moe_rec", rec_dataset, tmp_path / "bad", {"text_encoder": str(tmp_path / "nowhere")})


# ---- the leaderboard claim on the embedded data -----------------------------------------------


@pytest.fixture(scope="module")
def embedded_movielens(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_movielens(root / "movielens")
    return root


def test_on_the_embedded_data_every_recommender_beats_popularity(embedded_movielens, workdir):
    """The claim, with shortened training and 2 folds run side by side so the suite stays fast (the
    README has full runs). rqvae_t5 decodes text codes of 32 per level from the last item alone, its
    cheapest setting that learns what the codes carry (README).

    Measured at these settings: NDCG@10 popularity 0.036, sasrec 0.081, hier_moe_rec 0.056, rqvae_t5 0.049.
    """
    shutil.copytree(embedded_movielens, workdir / "data")
    generative = {"modalities": ["text"], "rqvae": {"codebook_size": 32}, "max_his_len": 1, "positions_per_user": 100}
    budgets = {"popularity": ({}, {}), "sasrec": ({"epochs": 12}, {}), "hier_moe_rec": ({"epochs": 5}, {}),
               "rqvae_t5": ({"epochs": 3, "batch_size": 256, "lr": 5e-3}, generative)}  # fmt: skip
    results = {}
    for name, (train, model) in budgets.items():
        config = make_run_config(name, {"train": {**train, "progress": False}, "model": model, "seed": 42,
                                        "threads_per_fold": 1, "workers": 2, "folds": 2})  # fmt: skip
        results[name] = run_cv(config, log=lambda message: None)
    scores = {name: result["cv_ndcg@10_full_mean"] for name, result in results.items()}
    for name in ("sasrec", "hier_moe_rec", "rqvae_t5"):
        assert scores[name] > 1.2 * scores["popularity"], scores
    assert len({result["fold_file"] for result in results.values()}) == 1

    board = leaderboard("movielens")
    assert set(board["model"]) == set(budgets) and set(board["metric"]) == {"ndcg@10_full"}
    assert board["model"][-1] == "popularity" and board["test"].is_not_null().all()
    run_dir = Path(results["hier_moe_rec"]["run_dir"])
    assert (run_dir / "routing_by_genre.png").exists() and (run_dir / "cross_modal.png").exists()
    submission = pd.read_csv(results["sasrec"]["submission"])
    assert list(submission.columns) == ["user_id", "items"] and len(submission) == 1000
    assert submission["items"].str.split().map(len).eq(20).all()

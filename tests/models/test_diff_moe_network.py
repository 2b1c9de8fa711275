"""The Diff-MoE network: shapes, routing, losses, checkpointing, the image-only prediction path, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F

import models.diff_moe_network as dmn
from harness.errors import HarnessError
from models.contrastive import info_nce_loss
from models.diff_moe_network import DiffMoEConfig, DiffMoENetwork, alignment_loss, routing_report
from models.moe import AttentiveRouter, kl_balance_loss, router_z_loss, squared_usage_loss

B, C, SIZE, PATCH, L, CLASSES = 4, 3, 8, 4, 6, 3
TOKENS_PER_IMAGE = 1 + (SIZE // PATCH) ** 2  # CLS + patches


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**overrides) -> DiffMoEConfig:
    tiny = dict(img_size=SIZE, in_channels=C, patch_size=PATCH, num_classes=CLASSES, embed_dim=16, num_heads=2,
                num_general_experts=4, top_k=2, img_encoder_layers=2, text_encoder_layers=1, fusion_layers=1,
                text_embed_dim=8, max_text_len=8, vocab_size=50, dropout=0.1,
                use_gradient_checkpointing=False)  # fmt: skip
    return DiffMoEConfig(**{**tiny, **overrides})


def _net(seed: int = 0, **overrides) -> DiffMoENetwork:
    torch.manual_seed(seed)
    return DiffMoENetwork(_config(**overrides))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, C, SIZE, SIZE, generator=g)
    tokens = torch.randint(1, 50, (B, L), generator=g)
    tokens[0, 4:] = 0  # padding
    tokens[1, 2:] = 0
    class_tokens = torch.randint(1, 50, (CLASSES, L), generator=g)
    class_tokens[:, 5:] = 0
    return images, tokens, class_tokens


# -- shapes and routing ---------------------------------------------------------------------------


def test_output_shapes_image_only_and_with_text():
    net = _net()
    images, tokens, class_tokens = _batch()
    out = net(images)
    assert out.logits.shape == (B, CLASSES) and out.image_embedding.shape == out.image_features.shape == (B, 16)
    assert out.text_embedding is None and out.fused_image is None and out.fused_text is None
    assert [r.layer for r in out.routing] == ["image.0", "image.1"]
    assert set(out.aux) == {"z_loss", "balance_loss", "aux_loss"}

    out = net(images, tokens, class_tokens=class_tokens)
    assert out.logits.shape == (B, CLASSES) and out.text_embedding.shape == (B, 16)
    assert out.fused_image.shape == out.fused_text.shape == (B, 16)
    assert [r.layer for r in out.routing] == ["image.0", "image.1", "class_text.0", "text.0", "fusion.0"]
    assert set(out.aux) == {"z_loss", "balance_loss", "alignment_loss", "contrastive_loss", "aux_loss"}
    assert all(value.dim() == 0 and torch.isfinite(value) for value in out.aux.values())
    for embedding in (out.image_embedding, out.text_embedding):
        assert torch.allclose(embedding.norm(dim=-1), torch.ones(B), atol=1e-5)
    embedding, features, records = net.encode_image(images)
    assert embedding.shape == features.shape == (B, 16) and len(records) == 2
    assert net.encode_text(tokens).shape == (B, 16)


def test_routing_records_have_the_documented_shapes_per_layer():
    net = _net()
    images, tokens, class_tokens = _batch()
    out = net(images, tokens, class_tokens=class_tokens)
    text_tokens = int((tokens != 0).sum())
    expected_tokens = {"image.0": B * TOKENS_PER_IMAGE, "image.1": B * TOKENS_PER_IMAGE,
                       "class_text.0": int((class_tokens != 0).sum()), "text.0": text_tokens,
                       "fusion.0": B * TOKENS_PER_IMAGE + text_tokens}  # padding is neither routed nor counted
    assert [r.layer for r in out.routing] == list(expected_tokens)
    for record in out.routing:
        t = expected_tokens[record.layer]
        assert record.logits.shape == record.probs.shape == record.weights.shape == (t, 4), record.layer
        assert record.indices.shape == (t, 2) and record.counts.shape == (4,), record.layer
    report = routing_report(out.routing)  # for logs: each expert's share of a layer's assignments, entropy
    assert len(report) == 5 * 5 and sum(report[f"routing/text.0/expert_{e}"] for e in range(4)) == pytest.approx(1.0)
    assert 0 < report["routing/fusion.0/entropy"] <= math.log(2) + 1e-6  # top-2: at most ln 2 per token


def test_top_k_sends_each_token_to_exactly_k_general_experts():
    net = _net().eval()
    images, tokens, _ = _batch()
    rows = {}  # tokens each general expert of each block processed, seen by hooks

    def count(key):
        return lambda module, args, output: rows.__setitem__(key, args[0].shape[0])

    for name, module in net.named_modules():
        if name.endswith("general_experts"):
            for e, expert in enumerate(module.experts):
                expert.register_forward_hook(count((name, e)))
    out = net(images, tokens)
    for record in out.routing:
        t = record.probs.shape[0]
        assert ((record.weights != 0).sum(-1) == 2).all(), record.layer
        assert (record.indices.sort(-1).values.diff(dim=-1) != 0).all()  # two distinct experts per token
        assert torch.equal(record.indices, record.probs.topk(2, dim=-1).indices)  # the router's top-2 (eval: no noise)
        assert int(record.counts.sum()) == t * 2
        assert torch.equal(record.counts, torch.bincount(record.indices.flatten(), minlength=4))
    assert sum(rows.values()) == sum(r.probs.shape[0] * 2 for r in out.routing)  # what the experts actually ran on


def test_attentive_router_keys_start_orthonormal_and_score_by_scaled_dot_product():
    torch.manual_seed(0)
    router = AttentiveRouter(16, 4, top_k=2)
    assert torch.allclose(router.keys @ router.keys.t(), torch.eye(4), atol=1e-5)
    x = torch.randn(5, 16)
    assert torch.allclose(router(x).logits, router.query(x) @ router.keys.t() / 4.0, atol=1e-6)  # sqrt(16) = 4
    wide = AttentiveRouter(4, 6)  # more experts than key dims: the columns are orthonormal instead
    assert torch.allclose(wide.keys.t() @ wide.keys, torch.eye(4), atol=1e-5)
    # the network's weight init leaves every block's keys orthonormal
    for module in _net().modules():
        if isinstance(module, AttentiveRouter):
            assert torch.allclose(module.keys @ module.keys.t(), torch.eye(4), atol=1e-5)


# -- losses ---------------------------------------------------------------------------------------


def test_st_moe_z_loss_and_the_seed_variant_hand_computed():
    # logsumexp([0, ln 3]) = ln 4, logsumexp([ln 2, ln 2]) = ln 4, logsumexp([0, 0]) = ln 2
    logits = torch.tensor([[0.0, math.log(3)], [math.log(2), math.log(2)], [0.0, 0.0]])
    assert float(router_z_loss(logits)) == pytest.approx((2 * math.log(4) ** 2 + math.log(2) ** 2) / 3)
    # the seed's "z-loss": probs [.25 .75], [.5 .5], [.5 .5] → mean P = [5/12, 7/12]; E · mean(P²)
    expected = 2 * ((5 / 12) ** 2 + (7 / 12) ** 2) / 2
    assert float(squared_usage_loss(logits.softmax(-1))) == pytest.approx(expected)
    assert float(squared_usage_loss(torch.full((3, 4), 0.25))) == pytest.approx(0.25)  # 1/E at uniform


@pytest.mark.parametrize("variant", ["st_moe", "seed"])
def test_the_network_sums_the_chosen_z_loss_over_layers(variant):
    net = _net(z_loss=variant)
    images, tokens, _ = _batch()
    with torch.no_grad():
        out = net(images, tokens)
    per_layer = [torch.logsumexp(r.logits, -1).square().mean() if variant == "st_moe"
                 else 4 * r.probs.mean(0).square().mean() for r in out.routing]  # fmt: skip
    assert float(out.aux["z_loss"]) == pytest.approx(float(sum(per_layer)), rel=1e-5)
    cfg = net.config
    weighted = (cfg.router_z_loss_weight * out.aux["z_loss"] + cfg.router_balance_loss_weight * out.aux["balance_loss"]
                + 0.1 * out.aux["alignment_loss"] + 0.1 * out.aux["contrastive_loss"])  # fmt: skip
    assert float(out.aux["aux_loss"]) == pytest.approx(float(weighted), rel=1e-5)


def test_kl_balance_loss_is_zero_at_uniform_utilisation_and_positive_otherwise():
    probs = torch.full((8, 4), 0.25)
    uniform = torch.zeros(8, 4)  # top-2: every expert chosen 4 times
    for t, pair in enumerate([(0, 1), (2, 3)] * 4):
        uniform[t, list(pair)] = 0.5
    assert float(kl_balance_loss(probs, uniform)) == pytest.approx(0.0, abs=1e-7)
    skewed = torch.zeros(8, 4)
    skewed[:, :2] = 0.5  # experts 0 and 1 take every token: f = [1/2, 1/2, 0, 0], KL = ln 2
    assert float(kl_balance_loss(probs, skewed)) == pytest.approx(math.log(2))
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 1.0
    assert float(kl_balance_loss(collapsed)) == pytest.approx(math.log(4))  # top-1 counting, one expert: ln E
    # differentiable through the probabilities: the over-used experts' probabilities are pushed down
    logits = torch.zeros(8, 4, requires_grad=True)
    kl_balance_loss(logits.softmax(-1), skewed).backward()
    assert (logits.grad[:, :2] > 0).all() and (logits.grad[:, 2:] < 0).all()


def test_info_nce_of_aligned_embeddings_is_lower_than_of_shuffled():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(8, 16), dim=-1)
    aligned = info_nce_loss(image, image, 10.0)
    shuffled = info_nce_loss(image, image[torch.randperm(8)], 10.0)
    assert float(aligned) < float(shuffled)
    # pair ids: rows 0 and 1 are one group (e.g. one class), so which of its texts is whose does not matter
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    swapped = image[[1, 0, 2, 3, 4, 5, 6, 7]]
    grouped = float(info_nce_loss(image, image, 10.0, ids))
    assert float(info_nce_loss(image, swapped, 10.0, ids)) == pytest.approx(grouped)
    assert float(info_nce_loss(image, swapped, 10.0)) > float(info_nce_loss(image, image, 10.0)) + 1
    assert float(alignment_loss(image, image)) == pytest.approx(-1.0)
    assert float(alignment_loss(image, -image)) == pytest.approx(1.0)


# -- training behaviour ------------------------------------------------------------------------------


def _loss_and_grads(net, images, tokens, class_tokens):
    torch.manual_seed(123)  # dropout and router noise
    out = net(images, tokens, class_tokens=class_tokens)
    loss = out.logits.square().mean() + out.aux["aux_loss"]
    net.zero_grad()
    loss.backward()
    return out, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(monkeypatch):
    net = _net(router_noise_std=0.5, dropout=0.2, use_gradient_checkpointing=True).train()
    images, tokens, class_tokens = _batch()
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(dmn, "checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    with_ckpt, grads_ckpt = _loss_and_grads(net, images, tokens, class_tokens)
    assert len(calls) == 5 and all(k == {"use_reentrant": False} for k in calls)  # every block, non-reentrant
    net.set_gradient_checkpointing(False)
    without, grads = _loss_and_grads(net, images, tokens, class_tokens)
    assert len(calls) == 5
    assert torch.equal(with_ckpt.logits, without.logits)
    assert torch.equal(with_ckpt.aux["aux_loss"], without.aux["aux_loss"])
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-6, rtol=1e-5), name
    net.set_gradient_checkpointing(True)
    net.eval()(images)  # not in eval mode
    assert len(calls) == 5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_text_tokens_never_change_the_image_only_logits(mode):
    net = _net(router_noise_std=0.5)
    net.train(mode == "train")
    images, tokens, _ = _batch()
    other = torch.randint(1, 50, tokens.shape, generator=torch.Generator().manual_seed(7))
    outputs = []
    for text in (None, tokens, other):
        torch.manual_seed(5)
        outputs.append(net(images, text))
    assert not torch.allclose(outputs[1].text_embedding, outputs[2].text_embedding)  # the texts do differ
    for out in outputs[1:]:
        assert torch.equal(out.logits, outputs[0].logits)
        assert torch.equal(out.image_embedding, outputs[0].image_embedding)


def test_class_prototypes_score_every_class_the_same_way_for_every_row():
    net = _net().eval()
    images, _, class_tokens = _batch()
    with torch.no_grad():
        prototypes = net.encode_text(class_tokens)
        out = net(images, class_tokens=class_tokens)
        reused = net(images, class_embeddings=prototypes)
        plain = net(images)
    assert torch.allclose(out.logits, reused.logits, atol=1e-6)
    expected = plain.logits + net.scale * plain.image_embedding @ prototypes.t()
    assert torch.allclose(out.logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"class_tokens or class_embeddings, not both"):
        net(images, class_tokens=class_tokens, class_embeddings=prototypes)
    with pytest.raises(ValueError, match=r"'class_embeddings' .* shape \(3, 16\)"):
        net(images, class_embeddings=prototypes[:2])


def test_pairing_rows_with_their_class_text_equals_passing_those_texts_as_tokens():
    net = _net().eval()
    images, _, class_tokens = _batch()
    labels = torch.tensor([2, 0, 2, 1])
    with torch.no_grad():
        as_tokens = net(images, class_tokens[labels], class_tokens=class_tokens, pair_ids=labels)
        paired = net(images, class_tokens=class_tokens, paired_class=labels)
    assert torch.equal(paired.logits, as_tokens.logits)
    for name in ("text_embedding", "fused_image", "fused_text"):
        assert torch.allclose(getattr(paired, name), getattr(as_tokens, name), atol=1e-5), name
    for name in ("alignment_loss", "contrastive_loss"):
        assert float(paired.aux[name]) == pytest.approx(float(as_tokens.aux[name]), abs=1e-5), name
    # the class texts are encoded once: no per-row text pass
    assert [r.layer for r in paired.routing] == ["image.0", "image.1", "class_text.0", "fusion.0"]
    with pytest.raises(ValueError, match=r"paired_class with class_tokens and without tokens"):
        net(images, paired_class=labels)
    with pytest.raises(ValueError, match=r"'paired_class' .* ids outside \[0, num_classes\) = \[0, 3\): min 0, max 3"):
        net(images, class_tokens=class_tokens, paired_class=torch.tensor([0, 1, 2, 3]))


def test_cls_attention_maps_cover_the_patch_grid():
    net = _net().eval()
    images, _, _ = _batch()
    maps = net.cls_attention(images)
    assert maps.shape == (B, SIZE // PATCH, SIZE // PATCH) and (maps >= 0).all()
    assert (maps.flatten(1).sum(1) <= 1 + 1e-6).all() and (maps.flatten(1).sum(1) > 0).all()
    # the same as attention recomputed by hand from the last layer's input
    x = net.image_encoder.patch_embed(images)
    for layer in net.image_encoder.layers[:-1]:
        x, _ = layer(x)
    last = net.image_encoder.layers[-1]
    h = last.norm1(x)
    q, k, _ = F.linear(h, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, -1)
    heads = last.attn.num_heads
    q, k = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q[:, :1], k))
    expected = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)[:, 0, 1:]
    assert torch.allclose(maps.flatten(1), expected.detach(), atol=1e-5)


def test_padding_is_neither_attended_to_nor_routed():
    net = _net().eval()
    images, tokens, _ = _batch()  # rows 0 and 1 are padded, 2 and 3 are not
    with torch.no_grad():
        batch = net(images, tokens)
        for row in (0, 1):
            alone = tokens[row : row + 1, : int((tokens[row] != 0).sum())]  # the same text without padding
            single = net(images[row : row + 1], alone)
            assert torch.allclose(batch.text_embedding[row], single.text_embedding[0], atol=1e-5)
            assert torch.allclose(batch.fused_text[row], single.fused_text[0], atol=1e-5)  # fusion masks it too
            assert torch.allclose(batch.fused_image[row], single.fused_image[0], atol=1e-5)
        assert not torch.allclose(batch.text_embedding[2], net.encode_text(tokens[2:3, :3])[0], atol=1e-3)


def test_the_block_ffn_is_the_mean_of_global_modality_and_routed_experts():
    net = _net().eval()
    block = net.image_encoder.layers[0]
    seen = {}
    for name in ("norm2", "global_expert", "vision_expert", "general_experts"):
        getattr(block, name).register_forward_hook(lambda m, args, out, name=name: seen.update({name: (args[0], out)}))
    x = torch.randn(2, TOKENS_PER_IMAGE, 16)
    with torch.no_grad():
        y, _ = block(x)
    after_attention = seen["norm2"][0]
    branches = seen["global_expert"][1] + seen["vision_expert"][1] + seen["general_experts"][1].output
    assert torch.allclose(y, after_attention + (branches / 3).view_as(x), atol=1e-6)
    assert block.text_expert is None and net.fusion.layers[0].block.vision_expert is None  # fusion: global + routed


def test_a_tiny_network_overfits_a_tiny_batch():
    net = _net(dropout=0.0)
    images, _, class_tokens = _batch()
    labels = torch.tensor([0, 1, 2, 1])
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-2)
    task_losses = []
    for _ in range(20):  # the family's classification step: class text as pair and as prototypes
        out = net(images, class_tokens=class_tokens, paired_class=labels)
        task = F.cross_entropy(out.logits, labels)
        optimiser.zero_grad()
        (task + out.aux["aux_loss"]).backward()
        optimiser.step()
        task_losses.append(round(float(task.detach()), 3))
    assert task_losses[-1] < 0.25 * task_losses[0], task_losses
    with torch.no_grad():  # predicted from the images and every class's text, as the family predicts
        prototypes = net.eval().encode_text(class_tokens)
        assert torch.equal(net(images, class_embeddings=prototypes).logits.argmax(-1), labels)


def test_same_seed_same_outputs():
    images, tokens, class_tokens = _batch()

    def run():
        net = _net(seed=3, router_noise_std=0.5).train()  # dropout and noise on
        torch.manual_seed(4)
        out = net(images, tokens, class_tokens=class_tokens)
        out.aux["aux_loss"].backward()
        return out, net.image_encoder.patch_embed.proj.weight.grad

    (a, grad_a), (b, grad_b) = run(), run()
    assert torch.equal(a.logits, b.logits) and torch.equal(a.text_embedding, b.text_embedding)
    assert all(torch.equal(x.indices, y.indices) for x, y in zip(a.routing, b.routing))
    assert torch.equal(a.aux["aux_loss"], b.aux["aux_loss"]) and torch.equal(grad_a, grad_b)


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"embed_dim": 0}, r"^model\.embed_dim must be a positive integer, got 0\.$"),
        ({"top_k": 5}, r"^model\.top_k must be <= model\.num_general_experts \(4\), got 5\.$"),
        ({"num_heads": 3}, r"^model\.num_heads must divide model\.embed_dim \(16\), got 3\.$"),
        ({"patch_size": 3}, r"^model\.patch_size must divide model\.img_size \(8\), got 3\.$"),
        ({"dropout": 1.0}, r"^model\.dropout must be in \[0, 1\), got 1\.0\.$"),
        ({"activation": "tanh"}, r"^model\.activation must be one of gelu, relu, silu, got 'tanh'\.$"),
        ({"z_loss": "switch"}, r"^model\.z_loss must be one of st_moe, seed, got 'switch'\.$"),
        ({"fusion_layers": -1}, r"^model\.fusion_layers must be an integer >= 0, got -1\.$"),
        ({"attention_dropout": -0.5}, r"^model\.attention_dropout must be in \[0, 1\), got -0\.5\.$"),
        ({"router_temperature": 0.0}, r"^model\.router_temperature must be > 0, got 0\.0\.$"),
        ({"contrastive_loss_weight": -0.1}, r"^model\.contrastive_loss_weight must be >= 0, got -0\.1\.$"),
    ],
)
def test_config_errors_name_the_field(overrides, match):
    with pytest.raises(HarnessError, match=match):
        _config(**overrides)


def test_input_errors_name_the_argument():
    net = _net()
    images, tokens, _ = _batch()
    with pytest.raises(ValueError, match=r"'images' .* shape \[B, 3, 8, 8\] .* Got \(4, 1, 8, 8\)"):
        net(images[:, :1])
    with pytest.raises(TypeError, match=r"'images' .* float tensor"):
        net(images.long())
    with pytest.raises(ValueError, match=r"'tokens' .* max_text_len \(8\); tokenise with context_length=8"):
        net(images, torch.ones(B, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"'tokens' .* ids outside \[0, vocab_size\) = \[0, 50\)"):
        net(images, tokens + 50)
    with pytest.raises(ValueError, match=r"'tokens' .* one row per image \(4\). Got 3 rows"):
        net(images, tokens[:3])

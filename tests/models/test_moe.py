"""The shared MoE building blocks: gate, mixture, routing losses, on hand-checked cases."""

import math

import pytest
import torch

from models.moe import (
    AttentiveRouter,
    Expert,
    Gate,
    MixtureOfExperts,
    Router,
    load_balance_loss,
    router_z_loss,
    routing_entropy,
)


def _reference(moe: MixtureOfExperts, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per token, Σ over its nonzero-weight experts of w_e · expert_e(token): the definition, looped."""
    tokens, weights = x.reshape(-1, moe.in_dim), weights.reshape(-1, moe.n_experts)
    rows = []
    for token, row in zip(tokens, weights):
        out = torch.zeros(moe.out_dim)
        for e in row.nonzero().flatten().tolist():
            out = out + row[e] * moe.experts[e](token)
        rows.append(out)
    return torch.stack(rows).reshape(*x.shape[:-1], moe.out_dim)


# -- gate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [None, 1, 2, 4])
def test_gate_weights_are_a_distribution(top_k):
    torch.manual_seed(0)
    out = Gate(6, 4, top_k=top_k)(torch.randn(3, 7, 6))
    assert out.weights.shape == out.logits.shape == out.probs.shape == (3, 7, 4)
    assert torch.allclose(out.weights.sum(-1), torch.ones(3, 7)) and (out.weights >= 0).all()
    assert torch.allclose(out.probs.sum(-1), torch.ones(3, 7))


def test_lower_temperature_sharpens_the_routing():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    gates = {t: Gate(6, 4, temperature=t) for t in (0.25, 1.0, 4.0)}
    for gate in gates.values():
        gate.load_state_dict(gates[1.0].state_dict())
    with torch.no_grad():
        entropy = {t: float(routing_entropy(gate(x).weights)) for t, gate in gates.items()}
    assert entropy[0.25] < entropy[1.0] < entropy[4.0] <= math.log(4)
    # logits stay pre-temperature, so the z-loss does not depend on it
    assert torch.equal(gates[0.25](x).logits, gates[4.0](x).logits)


def test_top_k_keeps_exactly_k_weights_renormalised():
    torch.manual_seed(0)
    gate = Gate(6, 5, top_k=2)
    out = gate(torch.randn(20, 6))
    assert ((out.weights != 0).sum(-1) == 2).all()
    top_probs, top_index = out.probs.topk(2, dim=-1)
    assert torch.allclose(out.weights.gather(-1, top_index), top_probs / top_probs.sum(-1, keepdim=True))


def test_mask_zeroes_masked_experts_and_rejects_rows_with_none_allowed():
    torch.manual_seed(0)
    gate = Gate(6, 3, top_k=2)
    x = torch.randn(4, 6)
    mask = torch.tensor([[True, True, True], [False, True, True], [True, False, False], [False, False, True]])
    out = gate(x, mask)
    assert (out.weights[~mask] == 0).all() and (out.probs[~mask] == 0).all()
    assert torch.equal(out.weights[2], torch.tensor([1.0, 0.0, 0.0]))  # one allowed expert < top_k: it takes all
    assert torch.allclose(out.weights.sum(-1), torch.ones(4))
    # a broadcast mask (one per expert) works too
    assert (gate(x, torch.tensor([True, False, True])).weights[:, 1] == 0).all()

    mask[1] = False
    with pytest.raises(ValueError, match=r"no allowed expert in some rows \(at index \[\[1\]\], at most 5 shown\)"):
        gate(x, mask)
    with pytest.raises(TypeError, match="must be a bool tensor"):
        gate(x, mask.float())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"temperature": 0.0},
            ValueError,
            r"The 'temperature' parameter of Gate must be a float > 0. Got 0.0 instead.",
        ),
        ({"temperature": -1}, ValueError, r"'temperature' .* Got -1 instead"),
        ({"top_k": 0}, ValueError, r"The 'top_k' parameter of Gate must be an int in the range \[1, 4\]. Got 0 "),
        ({"top_k": 5}, ValueError, r"'top_k' .* range \[1, 4\]. Got 5 instead"),
        ({"top_k": 1.5}, TypeError, r"The 'top_k' parameter of Gate must be an int. Got 1.5 instead."),
        ({"noise_std": -0.1}, ValueError, r"'noise_std' parameter of Gate must be a float >= 0. Got -0.1"),
        ({"n_experts": 0}, ValueError, r"'n_experts' parameter of Gate must be an int >= 1. Got 0"),
    ],
)
def test_gate_rejects_bad_arguments_by_name_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        Gate(**{"in_dim": 6, "n_experts": 4, **kwargs})


def test_bad_arguments_of_the_mixture_and_expert():
    with pytest.raises(ValueError, match=r"'top_k' parameter of Gate .* Got 4 instead"):
        MixtureOfExperts(6, 2, n_experts=3, top_k=4)
    with pytest.raises(ValueError, match=r"'dropout' parameter of Expert must be a float in the range \[0, 1\)"):
        Expert(6, 2, dropout=1.0)
    moe = MixtureOfExperts(6, 2, n_experts=3, gate_in_dim=5)
    with pytest.raises(ValueError, match=r"expects inputs \[\.\.\., 6\]"):
        moe(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"'gate_input' .* leading shape of x \(4,\)"):
        moe(torch.randn(4, 6), gate_input=torch.randn(3, 5))


def test_noise_only_in_training_mode():
    torch.manual_seed(0)
    gate = Gate(6, 4, top_k=2, noise_std=1.0)
    x = torch.randn(32, 6)
    assert not torch.equal(gate(x).weights, gate(x).weights)
    gate.eval()
    assert torch.equal(gate(x).weights, gate(x).weights)
    gate.train()
    assert torch.equal(gate(x).logits, gate.eval()(x).logits)  # logits are noise-free


def test_top_k_indices_are_the_selected_experts_largest_first():
    torch.manual_seed(0)
    out = Gate(6, 5, top_k=2)(torch.randn(3, 7, 6))
    assert out.indices.shape == (3, 7, 2)
    assert torch.equal(out.indices, out.probs.topk(2, dim=-1).indices)
    assert torch.equal(torch.zeros_like(out.weights).scatter(-1, out.indices, 1.0) != 0, out.weights != 0)
    assert Gate(6, 5)(torch.randn(3, 6)).indices is None  # dense


def test_attentive_router_routes_like_a_gate_on_scaled_dot_product_logits():
    torch.manual_seed(0)
    router = AttentiveRouter(6, 4, top_k=2, temperature=0.5, key_dim=8)
    assert isinstance(router, Router) and router.keys.shape == (4, 8)
    assert torch.allclose(router.keys @ router.keys.t(), torch.eye(4), atol=1e-6)  # orthonormal at init
    x = torch.randn(10, 6)
    out = router(x)
    logits = router.query(x) @ router.keys.t() / math.sqrt(8)
    assert torch.allclose(out.logits, logits, atol=1e-6)
    assert torch.allclose(out.probs, (logits / 0.5).softmax(-1), atol=1e-6)
    assert ((out.weights != 0).sum(-1) == 2).all()
    with pytest.raises(ValueError, match=r"The 'key_dim' parameter of AttentiveRouter must be an int >= 1. Got 0"):
        AttentiveRouter(6, 4, key_dim=0)
    with pytest.raises(ValueError, match=r"'top_k' parameter of AttentiveRouter .* range \[1, 4\]. Got 5"):
        AttentiveRouter(6, 4, top_k=5)


# -- losses -------------------------------------------------------------------------------------


def test_load_balance_loss_hand_computed():
    # one token per expert (f = P = 1/4) is perfect balance, soft or hard
    assert float(load_balance_loss(torch.eye(4))) == pytest.approx(1.0)
    soft = torch.full((4, 4), 0.1) + 0.6 * torch.eye(4)
    assert float(load_balance_loss(soft)) == pytest.approx(1.0)
    # every token on expert 0 with probability 1: f_0 = P_0 = 1 → E
    collapsed = torch.zeros(6, 4)
    collapsed[:, 0] = 1
    assert float(load_balance_loss(collapsed)) == pytest.approx(4.0)
    # top-2: assignments {0, 1} and {1, 2} → f = [1/4, 2/4, 1/4]; P = [0.35, 0.4, 0.25]
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    weights = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.6, 0.4]])
    expected = 3 * (0.25 * 0.35 + 0.5 * 0.4 + 0.25 * 0.25)
    assert float(load_balance_loss(probs, weights)) == pytest.approx(expected)
    assert float(load_balance_loss(probs[None], weights[None])) == pytest.approx(expected)  # leading dims flattened


def test_router_z_loss_and_entropy_hand_computed():
    # logsumexp([0, 0]) = ln 2, logsumexp([ln 3, 0]) = ln 4; masked (-inf) logits do not count
    logits = torch.tensor([[0.0, 0.0, float("-inf")], [math.log(3), 0.0, float("-inf")]])
    assert float(router_z_loss(logits)) == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2)
    assert float(routing_entropy(torch.full((5, 4), 0.25))) == pytest.approx(math.log(4))
    assert float(routing_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))) == pytest.approx(math.log(2) / 2)


# -- mixture ------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k, dense_impl", [(None, "per_expert"), (None, "concat"), (4, "auto"), (1, "auto"),
                                               (2, "auto"), (3, "auto")])  # fmt: skip
def test_mixture_equals_the_per_token_loop(top_k, dense_impl, monkeypatch):
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, n_experts=4, hidden_dim=5, top_k=top_k).eval()
    monkeypatch.setattr(moe, "dense_impl", dense_impl)
    x = torch.randn(2, 9, 6)
    out = moe(x)
    assert out.output.shape == (2, 9, 3) and out.weights.shape == (2, 9, 4)
    assert torch.allclose(out.output, _reference(moe, x, out.weights), atol=1e-6)


def test_sparse_mixture_skips_unselected_experts_and_honours_the_mask():
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, n_experts=4, top_k=2)
    calls = []
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda module, args, output, e=e: calls.append((e, args[0].shape[0])))
    mask = torch.tensor([True, True, False, True]).expand(10, 4)
    out = moe(torch.randn(10, 6), mask=mask)
    assert sum(rows for _, rows in calls) == 20  # 10 tokens × 2 experts, not 10 × 4
    assert dict(calls)[2] == 0 and (out.weights[:, 2] == 0).all()


def test_gate_input_routes_on_other_features():
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, n_experts=4, top_k=2, gate_in_dim=2)
    x, side = torch.randn(5, 7, 6), torch.randn(5, 7, 2)
    out = moe(x, gate_input=side)
    assert torch.equal(out.weights, moe.gate(side).weights)
    assert torch.allclose(out.output, _reference(moe, x, out.weights), atol=1e-6)


@pytest.mark.parametrize("top_k", [None, 2])
def test_gradients_reach_the_gate_and_every_used_expert(top_k):
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, n_experts=4, top_k=top_k, dropout=0.1)
    out = moe(torch.randn(64, 6))
    out.output.square().mean().backward(retain_graph=True)  # the task loss alone trains the router too
    assert moe.gate.proj.weight.grad.abs().sum() > 0
    assert (out.weights != 0).any(0).all()
    for expert in moe.experts:
        assert expert.fc1.weight.grad.abs().sum() > 0 and expert.fc2.bias.grad.abs().sum() > 0
    for aux in (load_balance_loss(out.probs, out.weights), router_z_loss(out.logits)):
        moe.zero_grad()
        aux.backward(retain_graph=True)
        assert moe.gate.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("top_k, dense_impl", [(None, "per_expert"), (None, "concat"), (2, "auto")])
def test_dropout_only_in_training_mode(top_k, dense_impl, monkeypatch):
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, n_experts=4, top_k=top_k, dropout=0.5)
    monkeypatch.setattr(moe, "dense_impl", dense_impl)
    x = torch.randn(16, 6)
    assert not torch.equal(moe(x).output, moe(x).output)
    moe.eval()
    assert torch.equal(moe(x).output, moe(x).output)


def test_deterministic_under_a_seed():
    def run():
        torch.manual_seed(3)
        moe = MixtureOfExperts(6, 3, n_experts=4, top_k=2, noise_std=0.5, dropout=0.2)  # noise and dropout on
        return moe(torch.randn(16, 6)).output

    assert torch.equal(run(), run())


@pytest.mark.parametrize("top_k", [None, 2])
def test_mixture_with_the_attentive_router_equals_the_per_token_loop(top_k):
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, n_experts=4, hidden_dim=5, top_k=top_k, router="attentive", activation="silu").eval()
    assert isinstance(moe.gate, AttentiveRouter) and isinstance(moe.experts[0].act, torch.nn.SiLU)
    x = torch.randn(2, 9, 6)
    out = moe(x)
    assert torch.equal(out.weights, moe.gate(x).weights)
    assert (out.indices is None) == (top_k is None)
    assert torch.allclose(out.output, _reference(moe, x, out.weights), atol=1e-6)
    moe.train()
    out.output.square().mean().backward()
    assert moe.gate.keys.grad.abs().sum() > 0 and moe.gate.query.weight.grad.abs().sum() > 0


def test_bad_router_and_activation_names():
    with pytest.raises(ValueError, match=r"The 'router' parameter of MixtureOfExperts must be one of 'linear', "
                                         r"'attentive'. Got 'dot' instead."):  # fmt: skip
        MixtureOfExperts(6, 2, n_experts=3, router="dot")
    with pytest.raises(ValueError, match=r"The 'activation' parameter of Expert must be one of 'gelu', 'relu', "
                                         r"'silu'. Got 'tanh' instead."):  # fmt: skip
        Expert(6, 2, activation="tanh")


def _clusters(seed: int, n: int = 512, d: int = 8, out: int = 4, k: int = 4):
    """k input clusters, each with its own linear map: y = A_c (x - μ_c). Train and test sets."""
    g = torch.Generator().manual_seed(seed)
    centers, maps = torch.randn(k, d, generator=g) * 4, torch.randn(k, d, out, generator=g)

    def sample():
        c = torch.randint(0, k, (n,), generator=g)
        x = centers[c] + torch.randn(n, d, generator=g) * 0.5
        return x, torch.einsum("nd,ndo->no", x - centers[c], maps[c])

    return sample(), sample()


def _fit(model: torch.nn.Module, train, test, steps: int = 300) -> float:
    (x, y), (x_test, y_test) = train, test
    predict = (lambda x: model(x).output) if isinstance(model, MixtureOfExperts) else model
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = (predict(x) - y).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        return float((predict(x_test) - y_test).square().mean())


@pytest.mark.parametrize("top_k", [None, 2])
def test_experts_beat_one_expert_of_the_same_size_when_clusters_need_different_maps(top_k):
    train, test = _clusters(seed=0)
    torch.manual_seed(0)
    single = _fit(Expert(8, 4, hidden_dim=16), train, test)
    torch.manual_seed(0)
    mixture = _fit(MixtureOfExperts(8, 4, n_experts=4, hidden_dim=16, top_k=top_k), train, test)
    assert mixture < 0.5 * single, (mixture, single)

"""Mixture-of-Experts building blocks shared by the MoE families.

This is the one place for the expert, the gate (router), the mixture and the routing losses; the
hierarchical MoE recommender, Diff-MoE and the multi-scale re-ID family build on these pieces
instead of each carrying its own copy, so a routing fix or a faster dispatch lands everywhere and
their auxiliary losses mean the same thing in every report.

- :class:`Expert`: a 2-layer MLP (GELU, ReLU or SiLU).
- :class:`ExpertBank`: E experts of the re-ID seed's form (Linear, LayerNorm, GELU, Dropout twice,
  plus a residual projection), each on its *own* input (e.g. one feature scale per expert), run as
  batched matmuls over stacked weights instead of a Python loop over experts.
- :class:`Router`: the routing shared by every router: temperature, optional (noisy) top-k and a
  mask of allowed experts (e.g. an expert whose modality is missing for that row). Its
  subclasses only say how a token's logits are computed:

  - :class:`Gate`: a linear router, ``logits = W x + b``.
  - :class:`MLPGate`: a 1-3 layer MLP router (the re-ID seed's ``GatingNetwork`` at depth 2).
  - :class:`AttentiveRouter`: attention-style scoring, ``logits_e = (W_q x) · k_e / sqrt(d)``
    against learned, orthogonally initialised expert keys (Diff-MoE).
- :class:`MixtureOfExperts`: experts + router, :math:`y = \\sum_e w_e\\,\\mathrm{expert}_e(x)`, on
  any leading shape. Dense routing runs every expert with the weights folded into its hidden
  layer; top-k routing sends each token only to its selected experts.
- :func:`load_balance_loss` (Switch/GShard), :func:`kl_balance_loss` (KL of the utilisation to
  uniform), :func:`router_z_loss` (ST-MoE), :func:`squared_usage_loss` (what the Diff-MoE seed
  calls its z-loss), :func:`usage_variance_loss` (the re-ID seed's expert balance: variance of the
  mean weights) and :func:`routing_entropy` (reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "AttentiveRouter",
    "Expert",
    "ExpertBank",
    "Gate",
    "GateOutput",
    "MLPGate",
    "MixtureOfExperts",
    "MoEOutput",
    "Router",
    "kl_balance_loss",
    "load_balance_loss",
    "router_z_loss",
    "routing_entropy",
    "squared_usage_loss",
    "usage_variance_loss",
]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}  # the activations an Expert accepts, by name


def _check_int(value, name: str, caller: str, low: int, high: int | None = None) -> None:
    """sklearn-style check of an integer argument in ``[low, high]``."""
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"The {name!r} parameter of {caller} must be an int. Got {value!r} instead.")
    if value < low or (high is not None and value > high):
        expected = f"an int in the range [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise ValueError(f"The {name!r} parameter of {caller} must be {expected}. Got {value!r} instead.")


def _check_float(value, name: str, caller: str, expected: str, ok) -> None:
    """sklearn-style check of a real argument; ``ok`` says whether the value is in range."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"The {name!r} parameter of {caller} must be a float. Got {value!r} instead.")
    if not ok(value):
        raise ValueError(f"The {name!r} parameter of {caller} must be {expected}. Got {value!r} instead.")


def _check_choice(value, name: str, caller: str, choices) -> None:
    """sklearn-style check of a string argument among ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"The {name!r} parameter of {caller} must be one of {options}. Got {value!r} instead.")


# ---------------------------------------------------------------------------------------------
# Expert and routers
# ---------------------------------------------------------------------------------------------


class Expert(nn.Module):
    """One expert: Linear → activation → Dropout → Linear.

    Args:
        in_dim: input features.
        out_dim: output features.
        hidden_dim: hidden width. Defaults to ``max(in_dim, out_dim)``.
        dropout: dropout on the hidden layer. Defaults to 0.0.
        activation: ``"gelu"``, ``"relu"`` or ``"silu"`` (:data:`ACTIVATIONS`). Defaults to ``"gelu"``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, dropout: float = 0.0,
                 activation: str = "gelu"):  # fmt: skip
        super().__init__()
        _check_int(in_dim, "in_dim", "Expert", 1)
        _check_int(out_dim, "out_dim", "Expert", 1)
        if hidden_dim is not None:
            _check_int(hidden_dim, "hidden_dim", "Expert", 1)
        _check_float(dropout, "dropout", "Expert", "a float in the range [0, 1)", lambda p: 0 <= p < 1)
        _check_choice(activation, "activation", "Expert", tuple(ACTIVATIONS))
        hidden_dim = hidden_dim or max(in_dim, out_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class ExpertBank(nn.Module):
    """``n_experts`` experts, expert e applied to its own input ``x[e]``: ``[E, ..., in] → [E, ..., out]``.

    Each expert is the re-ID seed's ``ExpertNetwork``::

        y = GELU(LN(Linear(Drop(GELU(LN(Linear(x))))))) → Dropout, + Linear_res(x)

    (the second block's dropout last, then the residual projection added). The experts' weights
    are stacked, so all experts run as one batched matmul per layer (``torch.baddbmm``) and a
    LayerNorm over the stacked activations; :meth:`forward_loop` runs them one at a time, as the
    seed's list comprehension does, for reference (``bench/bench_multiscale_moe.py`` times both;
    they agree to float rounding, forward and backward).

    Args:
        n_experts: number of experts.
        in_dim: input features of every expert.
        out_dim: output features.
        hidden_dim: hidden width. Defaults to ``2 * in_dim`` (the seed: 512 → 1024 → 512).
        dropout: dropout after each block. Defaults to 0.1 (the seed's).
        residual: add the residual projection. Defaults to True.
    """

    def __init__(self, n_experts: int, in_dim: int, out_dim: int, hidden_dim: int | None = None,
                 dropout: float = 0.1, residual: bool = True):  # fmt: skip
        super().__init__()
        for value, name in ((n_experts, "n_experts"), (in_dim, "in_dim"), (out_dim, "out_dim")):
            _check_int(value, name, "ExpertBank", 1)
        if hidden_dim is not None:
            _check_int(hidden_dim, "hidden_dim", "ExpertBank", 1)
        _check_float(dropout, "dropout", "ExpertBank", "a float in the range [0, 1)", lambda p: 0 <= p < 1)
        hidden_dim = hidden_dim or 2 * in_dim
        self.n_experts, self.in_dim, self.out_dim, self.hidden_dim = n_experts, in_dim, out_dim, hidden_dim
        self.w1, self.b1 = self._linear(in_dim, hidden_dim)
        self.w2, self.b2 = self._linear(hidden_dim, out_dim)
        self.norm1_weight, self.norm1_bias = self._norm(hidden_dim)
        self.norm2_weight, self.norm2_bias = self._norm(out_dim)
        self.w_res, self.b_res = self._linear(in_dim, out_dim) if residual else (None, None)
        self.drop = nn.Dropout(dropout)

    def _linear(self, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
        """Stacked ``[E, fan_in, fan_out]`` weights and ``[E, 1, fan_out]`` biases, initialised as ``nn.Linear``."""
        bound = 1 / math.sqrt(fan_in)
        weight = nn.Parameter(torch.empty(self.n_experts, fan_in, fan_out))
        nn.init.kaiming_uniform_(weight.transpose(1, 2), a=math.sqrt(5))  # nn.Linear's init, per expert
        return weight, nn.Parameter(torch.empty(self.n_experts, 1, fan_out).uniform_(-bound, bound))

    def _norm(self, dim: int) -> tuple[nn.Parameter, nn.Parameter]:
        """Per-expert LayerNorm affine ``[E, 1, dim]``, initialised as ``nn.LayerNorm``."""
        return nn.Parameter(torch.ones(self.n_experts, 1, dim)), nn.Parameter(torch.zeros(self.n_experts, 1, dim))

    @property
    def residual(self) -> bool:
        return self.w_res is not None

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[0] != self.n_experts or x.shape[-1] != self.in_dim:
            raise ValueError(f"ExpertBank expects inputs [{self.n_experts}, ..., {self.in_dim}] (one slice per expert). "
                             f"Got shape {tuple(x.shape)}.")  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[E, ..., in_dim]`` → ``[E, ..., out_dim]``, every expert in one batched matmul per layer."""
        self._check(x)
        lead = x.shape[1:-1]
        flat = x.reshape(self.n_experts, -1, self.in_dim)
        hidden = self._block(torch.baddbmm(self.b1, flat, self.w1), self.norm1_weight, self.norm1_bias)
        out = self._block(torch.baddbmm(self.b2, hidden, self.w2), self.norm2_weight, self.norm2_bias)
        if self.residual:
            out = out + torch.baddbmm(self.b_res, flat, self.w_res)
        return out.reshape(self.n_experts, *lead, self.out_dim)

    def forward_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The same, one expert at a time (the reference :meth:`forward` is checked against)."""
        self._check(x)
        outputs = []
        for e in range(self.n_experts):
            xe = x[e]
            hidden = self._block(xe @ self.w1[e] + self.b1[e, 0], self.norm1_weight[e, 0], self.norm1_bias[e, 0])
            out = self._block(hidden @ self.w2[e] + self.b2[e, 0], self.norm2_weight[e, 0], self.norm2_bias[e, 0])
            outputs.append(out + xe @ self.w_res[e] + self.b_res[e, 0] if self.residual else out)
        return torch.stack(outputs)

    def _block(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """LayerNorm (per-expert affine) → GELU → Dropout."""
        return self.drop(F.gelu(F.layer_norm(z, z.shape[-1:]) * weight + bias))

    def extra_repr(self) -> str:
        return (f"n_experts={self.n_experts}, in_dim={self.in_dim}, hidden_dim={self.hidden_dim}, "
                f"out_dim={self.out_dim}, residual={self.residual}")  # fmt: skip


@dataclass
class GateOutput:
    """What a router returns: ``weights``, ``logits`` and ``probs`` are ``[..., n_experts]``."""

    weights: torch.Tensor  # routing weights used to mix the experts; sum to 1, exactly 0 off the top-k
    logits: torch.Tensor  # router logits before temperature and noise (masked experts -inf): for router_z_loss
    probs: torch.Tensor  # full softmax before top-k truncation: for load_balance_loss
    indices: torch.Tensor | None = None  # [..., k] the top-k experts, largest first; None for dense routing


class Router(nn.Module):
    """Base of the routers: ``softmax(logits / temperature)``, optionally truncated to the top-k experts.

    A subclass computes a token's logits in :meth:`score`; everything after that (temperature,
    noise, mask, top-k) is :meth:`route`, shared, so :class:`MixtureOfExperts` dispatches and the
    routing losses read every router the same way.

    Use a temperature below 1 for sharper (more specialised) routing, ``top_k`` for sparse routing
    (each row only pays for k experts in :class:`MixtureOfExperts`) and ``noise_std`` for noisy
    top-k (Shazeer et al., 2017), which lets experts that are rarely in the top-k still get tried.

    ``mask`` (bool ``[..., n_experts]``, broadcastable to the logits, True = allowed) removes
    experts per row, e.g. the expert of a modality the row does not have: their logits become
    ``-inf`` and their weights exactly 0. Every row needs at least one allowed expert; when fewer
    than ``top_k`` are allowed, the row uses the allowed ones only (``indices`` then also lists
    masked experts, with weight 0).

    .. note:: With ``top_k=1`` the kept weight is always exactly 1, so the task loss gives the router
       no gradient and it learns from the auxiliary losses alone (Switch Transformer scales by the
       unrenormalised probability instead); use ``top_k >= 2`` when the router must learn the task.

    .. note:: Noise is added in training mode only; ``eval()`` routes deterministically.
       ``logits`` stays noise-free so that the z-loss regularises the router, not the noise.

    Args:
        in_dim: features the router sees.
        n_experts: number of experts routed over.
        temperature: divides the logits before the softmax; must be > 0. Defaults to 1.0.
        top_k: keep only the k largest weights (renormalised to sum to 1); must be in
            ``[1, n_experts]``. Defaults to None (dense: every expert).
        noise_std: std of the Gaussian noise added to the logits in training mode. Defaults to 0.0.
    """

    def __init__(self, in_dim: int, n_experts: int, temperature: float = 1.0, top_k: int | None = None,
                 noise_std: float = 0.0):  # fmt: skip
        super().__init__()
        caller = type(self).__name__
        _check_int(in_dim, "in_dim", caller, 1)
        _check_int(n_experts, "n_experts", caller, 1)
        _check_float(temperature, "temperature", caller, "a float > 0", lambda t: t > 0)
        if top_k is not None:
            _check_int(top_k, "top_k", caller, 1, n_experts)
        _check_float(noise_std, "noise_std", caller, "a float >= 0", lambda s: s >= 0)
        self.in_dim = in_dim
        self.n_experts = n_experts
        self.temperature = float(temperature)
        self.top_k = top_k
        self.noise_std = float(noise_std)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``[..., n_experts]`` of inputs ``[..., in_dim]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(x) -> logits")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> GateOutput:
        return self.route(self.score(x), mask)

    def route(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> GateOutput:
        """Temperature, noise, mask and top-k applied to logits computed elsewhere.

        For routers whose logits are cheaper to compute in parts: a linear gate over
        ``[user; item]`` features evaluated for every (user, item) pair is ``user @ W_u.T`` plus
        ``item @ W_i.T`` broadcast, with ``W_u, W_i`` slices of ``proj.weight``.
        """
        caller = f"{type(self).__name__}.forward"
        if mask is not None:
            if mask.dtype != torch.bool:
                raise TypeError(f"The 'mask' argument of {caller} must be a bool tensor (True = allowed). "
                                f"Got dtype {mask.dtype} instead.")  # fmt: skip
            mask = mask.to(logits.device).expand_as(logits)
            if not bool(mask.any(-1).all()):
                rows = (~mask.any(-1)).nonzero()[:5].tolist()
                raise ValueError(f"The 'mask' argument of {caller} leaves no allowed expert in some rows "
                                 f"(at index {rows}, at most 5 shown); every row needs at least one True.")  # fmt: skip
            logits = logits.masked_fill(~mask, float("-inf"))
        routing = logits
        if self.training and self.noise_std > 0:
            routing = logits + torch.randn_like(logits) * self.noise_std
        routing = routing / self.temperature
        probs = routing.softmax(-1)
        if self.top_k is None:
            return GateOutput(weights=probs, logits=logits, probs=probs)
        # Softmax over the k largest logits = their probs renormalised; -inf (masked) picks get 0.
        top_logits, top_index = routing.topk(self.top_k, dim=-1)
        if self.top_k == self.n_experts:
            weights = probs
        else:
            weights = torch.zeros_like(probs).scatter(-1, top_index, top_logits.softmax(-1))
        return GateOutput(weights=weights, logits=logits, probs=probs, indices=top_index)

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, temperature={self.temperature}, top_k={self.top_k}, "
            f"noise_std={self.noise_std}"
        )


class Gate(Router):
    """Linear router: ``logits = proj(x)``, then :meth:`Router.route`.

    Args: those of :class:`Router`.
    """

    def __init__(self, in_dim: int, n_experts: int, temperature: float = 1.0, top_k: int | None = None,
                 noise_std: float = 0.0):  # fmt: skip
        super().__init__(in_dim, n_experts, temperature, top_k, noise_std)
        self.proj = nn.Linear(in_dim, n_experts)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPGate(Router):
    """MLP router: ``depth - 1`` hidden blocks (Linear → LayerNorm → GELU → Dropout) then a Linear
    to the logits, then :meth:`Router.route`.

    Depth 2 with ``hidden_dim = in_dim // 2`` and dropout 0.1 is the re-ID seed's ``GatingNetwork``;
    depth 1 is :class:`Gate`'s linear map; depth 3 adds a second hidden block of the same width
    (the seed's gate-depth ablation).

    Args: those of :class:`Router`, and
        depth: layers, 1-3. Defaults to 2.
        hidden_dim: width of the hidden blocks. Defaults to ``max(1, in_dim // 2)``.
        dropout: after each hidden block. Defaults to 0.1.
    """

    def __init__(self, in_dim: int, n_experts: int, temperature: float = 1.0, top_k: int | None = None,
                 noise_std: float = 0.0, depth: int = 2, hidden_dim: int | None = None, dropout: float = 0.1):  # fmt: skip
        super().__init__(in_dim, n_experts, temperature, top_k, noise_std)
        _check_int(depth, "depth", "MLPGate", 1, 3)
        if hidden_dim is not None:
            _check_int(hidden_dim, "hidden_dim", "MLPGate", 1)
        _check_float(dropout, "dropout", "MLPGate", "a float in the range [0, 1)", lambda p: 0 <= p < 1)
        self.depth = depth
        hidden_dim = hidden_dim or max(1, in_dim // 2)
        layers, width = [], in_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(width, n_experts))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, " + super().extra_repr()


class AttentiveRouter(Router):
    """Attention-style router (Diff-MoE): a token's query against one learned key per expert.

    .. math:: \\mathrm{logits}_e(x) = \\frac{(W_q x) \\cdot k_e}{\\sqrt{d_k}}

    then temperature, training-mode noise and top-k exactly as :class:`Router` (so
    :class:`MixtureOfExperts` and the routing losses treat it like a :class:`Gate`). The expert
    keys ``keys [n_experts, key_dim]`` start orthonormal (``nn.init.orthogonal_``), so at
    initialisation no two experts compete for the same query direction; with more experts than
    ``key_dim`` the columns are orthonormal instead (rows cannot all be).

    Args:
        in_dim: features the router sees.
        n_experts: number of experts routed over.
        temperature: divides the logits before the softmax; must be > 0. Defaults to 1.0.
        top_k: experts per token; None for dense. Defaults to None.
        noise_std: std of the Gaussian noise on the logits in training mode. Defaults to 0.0.
        key_dim: width of the queries and keys. Defaults to ``in_dim``.
    """

    def __init__(self, in_dim: int, n_experts: int, temperature: float = 1.0, top_k: int | None = None,
                 noise_std: float = 0.0, key_dim: int | None = None):  # fmt: skip
        super().__init__(in_dim, n_experts, temperature, top_k, noise_std)
        if key_dim is not None:
            _check_int(key_dim, "key_dim", "AttentiveRouter", 1)
        self.key_dim = key_dim or in_dim
        self.query = nn.Linear(in_dim, self.key_dim)
        self.keys = nn.Parameter(torch.empty(n_experts, self.key_dim))
        self.reset_keys()

    def reset_keys(self) -> None:
        """Orthonormal expert keys (rows, or columns when ``n_experts > key_dim``)."""
        nn.init.orthogonal_(self.keys)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x) @ self.keys.t() / math.sqrt(self.key_dim)

    def extra_repr(self) -> str:
        return f"key_dim={self.key_dim}, " + super().extra_repr()


# ---------------------------------------------------------------------------------------------
# Mixture
# ---------------------------------------------------------------------------------------------


@dataclass
class MoEOutput:
    """What :class:`MixtureOfExperts` returns: the mixed output and the router's tensors."""

    output: torch.Tensor  # [..., out_dim]
    weights: torch.Tensor  # [..., n_experts] routing weights (exactly 0 where a row skipped an expert)
    logits: torch.Tensor  # [..., n_experts] for router_z_loss
    probs: torch.Tensor  # [..., n_experts] for load_balance_loss
    indices: torch.Tensor | None = None  # [..., k] the router's top-k experts; None for dense routing


class MixtureOfExperts(nn.Module):
    """Experts and a gate: ``output = Σ_e w_e · expert_e(x)`` for inputs ``[..., in_dim]``.

    Dense routing (``top_k`` None or equal to ``n_experts``) runs every expert on every token and
    folds the weights into each expert's hidden activations, so the weighted sum is the second
    layer's matmul and costs no extra pass (``dense_impl`` below says how). Sparse routing
    (``top_k < n_experts``) sends each token only to the experts with a nonzero weight: tokens are
    grouped by expert, each expert runs on its group, and the weighted results are added back per
    token; unselected experts cost nothing. Both give the same result as calling each expert and
    summing (up to float rounding).

    ``dense_impl`` (class attribute) picks the dense form: ``"per_expert"`` (one expert at a time,
    accumulated with ``addmm``) or ``"concat"`` (all first layers as one ``in → E·hidden`` matmul,
    all second layers as one ``E·hidden → out`` matmul). ``"auto"``, the default, uses per_expert
    on CPU, where the matmuls dominate and the concatenated ``[N, E·hidden]`` activations fall out
    of cache (``bench/bench_moe.py``: concat equal or up to ~1.8x slower, e.g. dim 256 with 8
    experts), and concat on CUDA, where kernel launches rather than matmuls dominate at these
    sizes (the bench times both forms on either device).

    Add the auxiliary losses from the returned tensors, e.g.
    ``loss + 0.01 * load_balance_loss(out.probs, out.weights) + 1e-3 * router_z_loss(out.logits)``.

    Args:
        in_dim: input features of the experts.
        out_dim: output features.
        n_experts: number of experts.
        hidden_dim: hidden width of each expert. Defaults to ``max(in_dim, out_dim)``.
        temperature: gate temperature (> 0). Defaults to 1.0.
        top_k: experts per token; None for dense. Defaults to None.
        noise_std: gate noise in training mode (noisy top-k). Defaults to 0.0.
        dropout: dropout inside the experts. Defaults to 0.0.
        gate_in_dim: features the gate routes on when they differ from the experts' input (pass
            them as ``gate_input``). Defaults to ``in_dim`` (route on ``x``).
        router: ``"linear"`` (:class:`Gate`) or ``"attentive"`` (:class:`AttentiveRouter`, keys of
            width ``gate_in_dim``); the dispatch and the losses are the same for both. Defaults to
            ``"linear"``.
        activation: the experts' activation, a key of :data:`ACTIVATIONS`. Defaults to ``"gelu"``.
    """

    dense_impl: str = "auto"  # "auto" | "per_expert" | "concat"; see the class docstring
    routers = {"linear": Gate, "attentive": AttentiveRouter}  # the router classes by name

    def __init__(self, in_dim: int, out_dim: int, n_experts: int, hidden_dim: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, noise_std: float = 0.0,
                 dropout: float = 0.0, gate_in_dim: int | None = None, router: str = "linear",
                 activation: str = "gelu"):  # fmt: skip
        super().__init__()
        _check_int(n_experts, "n_experts", "MixtureOfExperts", 1)
        _check_choice(router, "router", "MixtureOfExperts", tuple(self.routers))
        self.in_dim, self.out_dim, self.n_experts = in_dim, out_dim, n_experts
        self.experts = nn.ModuleList(Expert(in_dim, out_dim, hidden_dim, dropout, activation) for _ in range(n_experts))
        gate_dim = in_dim if gate_in_dim is None else gate_in_dim
        self.gate = self.routers[router](gate_dim, n_experts, temperature, top_k, noise_std)

    @property
    def top_k(self) -> int | None:
        return self.gate.top_k

    @property
    def sparse(self) -> bool:
        return self.top_k is not None and self.top_k < self.n_experts

    def forward(self, x: torch.Tensor, gate_input: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> MoEOutput:  # fmt: skip
        """Mix the experts on ``x`` ``[..., in_dim]``, routed on ``gate_input`` (default ``x``).

        ``gate_input`` must share ``x``'s leading shape; ``mask`` is the gate's (bool
        ``[..., n_experts]``, True = allowed).
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MixtureOfExperts expects inputs [..., {self.in_dim}]. Got shape {tuple(x.shape)}.")
        if gate_input is None:
            gate_input = x
        elif gate_input.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"The 'gate_input' argument of MixtureOfExperts.forward must share the leading shape "
                             f"of x {tuple(x.shape[:-1])}. Got shape {tuple(gate_input.shape)}.")  # fmt: skip
        gate = self.gate(gate_input, mask)
        lead = x.shape[:-1]
        tokens = x.reshape(-1, self.in_dim)
        weights = gate.weights.reshape(-1, self.n_experts)
        output = self._sparse(tokens, weights) if self.sparse else self._dense(tokens, weights)
        return MoEOutput(output=output.reshape(*lead, self.out_dim), weights=gate.weights, logits=gate.logits,
                         probs=gate.probs, indices=gate.indices)  # fmt: skip

    def _dense(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every token; ``Σ_e w_e (h_e W2_e + b2_e)`` with the weights folded into ``h_e``."""
        impl = self.dense_impl
        if impl not in ("auto", "concat", "per_expert"):
            raise ValueError(f"MixtureOfExperts.dense_impl must be 'auto', 'concat' or 'per_expert'. "
                             f"Got {impl!r} instead.")  # fmt: skip
        # CUDA → concat: ~6 kernels instead of ~4 per expert; not yet confirmed by the bench on a GPU.
        if impl == "concat" or (impl == "auto" and tokens.is_cuda):
            return self._dense_concat(tokens, weights)
        return self._dense_per_expert(tokens, weights)

    def _dense_per_expert(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One expert at a time, accumulated by ``addmm``: each hidden block stays cache-sized."""
        out = weights @ torch.stack([e.fc2.bias for e in self.experts])  # Σ_e w_e b2_e, [N, out]
        for e, expert in enumerate(self.experts):
            hidden = expert.drop(expert.act(expert.fc1(tokens))) * weights[:, e : e + 1]
            out = torch.addmm(out, hidden, expert.fc2.weight.t())
        return out

    def _dense_concat(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """All experts as two matmuls over the concatenated expert weights: few, large kernels."""
        experts = self.experts
        w1 = torch.cat([e.fc1.weight for e in experts])  # [E·H, in]
        b1 = torch.cat([e.fc1.bias for e in experts])  # [E·H]
        w2 = torch.cat([e.fc2.weight for e in experts], dim=1)  # [out, E·H]
        b2 = torch.stack([e.fc2.bias for e in experts])  # [E, out]
        hidden = experts[0].drop(experts[0].act(F.linear(tokens, w1, b1)))  # [N, E·H]
        n, hidden_dim = hidden.shape[0], w1.shape[0] // self.n_experts
        # [w_1 h_1, …, w_E h_E] W2 + w b2: weight the hidden blocks, then one matmul sums the experts.
        hidden = (hidden.view(n, self.n_experts, hidden_dim) * weights.unsqueeze(-1).to(hidden.dtype)).view(n, -1)
        return F.linear(hidden, w2) + weights.to(hidden.dtype) @ b2

    def _sparse(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Each token through its selected (nonzero-weight) experts only, grouped by expert."""
        # Nonzero of the transpose lists (expert, token) pairs already sorted by expert.
        expert_index, token_index = weights.t().nonzero(as_tuple=True)
        counts = torch.bincount(expert_index, minlength=self.n_experts).tolist()
        groups = tokens.index_select(0, token_index).split(counts)
        outputs = torch.cat([expert(group) for expert, group in zip(self.experts, groups)])
        outputs = outputs * weights[token_index, expert_index].unsqueeze(-1).to(outputs.dtype)
        return outputs.new_zeros(tokens.shape[0], self.out_dim).index_add_(0, token_index, outputs)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, n_experts={self.n_experts}, top_k={self.top_k}"


# ---------------------------------------------------------------------------------------------
# Routing losses and reports
# ---------------------------------------------------------------------------------------------


def _assignment_fraction(probs: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Fraction ``[E]`` of token assignments per expert (top-1 of ``probs``, or nonzero ``weights``), detached."""
    n_experts = probs.shape[-1]
    if weights is None:
        assigned = F.one_hot(probs.argmax(-1), n_experts).to(probs.dtype)
    else:
        assigned = (weights.reshape(-1, n_experts) != 0).to(probs.dtype)
    return (assigned.sum(0) / assigned.sum().clamp(min=1)).detach()


def load_balance_loss(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Switch/GShard auxiliary loss that pushes the router to spread tokens over all experts.

    .. math:: L = E \\sum_{e=1}^{E} f_e\\,P_e

    with :math:`P_e` the mean router probability of expert e (differentiable) and :math:`f_e` the
    fraction of assignments that went to e (not differentiable): each token's top-1 expert, or,
    with ``weights``, every expert it was routed to (nonzero weight; fractions of all
    assignments, so they sum to 1 under top-k as well). :math:`L = 1` at perfect balance and
    :math:`L = E` when every token goes to one expert with probability 1. Leading dims are
    flattened: pass ``[..., E]`` tensors straight from :class:`GateOutput` / :class:`MoEOutput`.

    Args:
        probs: full router probabilities ``[..., E]`` (``GateOutput.probs``).
        weights: routing weights ``[..., E]`` (``GateOutput.weights``); None: count top-1.
    """
    n_experts = probs.shape[-1]
    probs = probs.reshape(-1, n_experts)
    return n_experts * (_assignment_fraction(probs, weights) * probs.mean(0)).sum()


def kl_balance_loss(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL divergence of the expert utilisation from uniform (the Diff-MoE seed's load balance).

    .. math:: L = \\mathrm{KL}(f \\,\\|\\, U) = \\sum_{e=1}^{E} f_e \\log(E f_e)

    with :math:`f_e` the fraction of assignments that went to expert e, counted as in
    :func:`load_balance_loss` (top-1, or every nonzero weight), and ``0·log 0 = 0``. :math:`L = 0`
    exactly at uniform utilisation, :math:`\\log E` when every token goes to one expert.

    The counts have no gradient, so, as Switch does with :math:`f_e P_e`, the gradient flows
    through the mean router probabilities :math:`P_e`: the loss is
    :math:`\\mathrm{KL}(f\\|U) + \\sum_e \\log(E f_e)\\,(P_e - \\mathrm{sg}(P_e))`, whose value is the
    KL above and whose gradient is that of :math:`\\mathrm{KL}(u\\|U)` at :math:`u = f` applied to
    :math:`P` (a straight-through estimate; the ``+1`` of :math:`\\partial/\\partial u_e` drops out
    as the :math:`P_e` sum to 1). Over-used experts (:math:`f_e > 1/E`) are pushed down, under-used
    ones up; an unused expert's :math:`f_e` is clamped at 1e-6 in the log so its push stays finite.

    Args:
        probs: full router probabilities ``[..., E]`` (``GateOutput.probs``).
        weights: routing weights ``[..., E]`` (``GateOutput.weights``); None: count top-1.
    """
    n_experts = probs.shape[-1]
    probs = probs.reshape(-1, n_experts)
    fraction = _assignment_fraction(probs, weights)
    log_ratio = torch.log(fraction.clamp(min=1e-6) * n_experts)
    mean_probs = probs.mean(0)
    return (fraction * log_ratio).sum() + (log_ratio * (mean_probs - mean_probs.detach())).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss, ``mean(logsumexp(logits, -1)^2)``: keeps router logits small.

    Large logits make the softmax saturate and round badly in low precision; this penalises their
    size without changing which expert wins. Masked (``-inf``) logits are ignored by logsumexp.
    """
    return torch.logsumexp(logits, dim=-1).square().mean()


def squared_usage_loss(probs: torch.Tensor) -> torch.Tensor:
    """``E · mean_e(P_e^2)``, :math:`P_e` the mean router probability of expert e: a soft usage balance.

    What the Diff-MoE seed calls its "z-loss" (``compute_z_loss``); despite the name it does not
    regularise the logits' size (that is :func:`router_z_loss`) but how unevenly the probability
    mass is spread: :math:`1/E` at uniform mean probabilities, 1 when one expert takes all of it.
    Leading dims are flattened.

    Args:
        probs: full router probabilities ``[..., E]`` (``GateOutput.probs``).
    """
    n_experts = probs.shape[-1]
    return n_experts * probs.reshape(-1, n_experts).mean(0).square().mean()


def usage_variance_loss(weights: torch.Tensor) -> torch.Tensor:
    """Variance over experts of the mean routing weight per expert (the re-ID seed's ``expert_balance_loss``).

    .. math:: L = \\mathrm{Var}_e\\big(\\bar w_e\\big), \\quad \\bar w_e = \\mathrm{mean}_{tokens}\\, w_e

    with the unbiased variance, as ``torch.var`` computes it (the seed's code). 0 when every expert
    gets the same mean weight, :math:`1/E` when one expert takes all the weight. Differentiable
    through the weights; leading dims are flattened. Also the "usage balance" of the routing reports.
    """
    n_experts = weights.shape[-1]
    if n_experts == 1:
        return weights.sum() * 0.0  # one expert is always balanced (the unbiased variance of one value is NaN)
    return weights.reshape(-1, n_experts).mean(0).var()


def routing_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the routing weights per token, with ``0·log 0 = 0``.

    For reports: 0 when every token uses one expert, ``log E`` for uniform dense routing,
    at most ``log k`` under top-k.
    """
    return torch.special.entr(weights).sum(-1).mean()

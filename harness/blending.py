"""Blending row-wise predictions: pure functions on a stack of member predictions.

``P`` has shape ``[M, N]`` (regression) or ``[M, N, C]`` (class probabilities), ``M`` members
and ``N`` rows:

* :func:`mean`, :func:`median`, :func:`weighted_mean`, :func:`rank_mean`;
* :func:`optimize_weights` chooses simplex weights for :func:`weighted_mean` on the OOF rows;
* :func:`stack` fits a level-2 model (ridge or LightGBM) under the members' own folds;
* :func:`blend` applies one method by name to the OOF and the test stacks.

The row-wise task adapters (:mod:`harness.tasks.rowwise`) blend through these; the ensembler
(:mod:`harness.ensemble`) only loads members and asks their task adapter.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from harness.errors import HarnessError

__all__ = [
    "METHODS",
    "STACKERS",
    "LOG_SPACE_METRICS",
    "mean",
    "median",
    "weighted_mean",
    "normalise_weights",
    "optimize_weights",
    "rank_mean",
    "stack",
    "blend",
]

METHODS = ("mean", "median", "weighted_mean", "rank_mean", "stacking")
STACKERS = ("ridge", "lightgbm")
LOG_SPACE_METRICS = ("msle", "rmsle")  # metrics computed on log1p: stackers fit on log1p too


def mean(P: np.ndarray) -> np.ndarray:
    r"""Arithmetic mean of the members: :math:`\hat y_i = \frac{1}{M}\sum_m p_{mi}`."""
    return np.mean(np.asarray(P, dtype=float), axis=0)


def median(P: np.ndarray) -> np.ndarray:
    r"""Element-wise median of the members: :math:`\hat y_i = \operatorname{median}_m p_{mi}`.

    For class probabilities the per-class medians no longer sum to 1; :func:`blend` renormalises.
    """
    return np.median(np.asarray(P, dtype=float), axis=0)


def normalise_weights(weights: Sequence[float], n_members: int) -> np.ndarray:
    """Check user weights (finite, non-negative, one per member, positive sum) and scale them to sum 1."""
    try:
        w = np.asarray(weights, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise HarnessError(f"Weights must be numbers, got {weights!r}.") from None
    if len(w) != n_members:
        raise HarnessError(f"Got {len(w)} weights for {n_members} runs; give one weight per run.")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise HarnessError(f"Weights must be non-negative with a positive sum, got {list(map(float, w))}.")
    return w / w.sum()


def weighted_mean(P: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    r"""Weighted mean: :math:`\hat y_i = \sum_m w_m p_{mi}` with :math:`w_m \ge 0,\ \sum_m w_m = 1`.

    ``weights`` are checked and normalised by :func:`normalise_weights`.
    """
    P = np.asarray(P, dtype=float)
    return np.tensordot(normalise_weights(weights, P.shape[0]), P, axes=1)


def rank_mean(P: np.ndarray) -> np.ndarray:
    r"""Mean of the members' ranks, mapped back to the target scale.

    Each member's predictions become ranks scaled to [0, 1] (ties share their average rank):
    :math:`r_{mi} = (\operatorname{rank}(p_{m\cdot})_i - 1) / (N - 1)`, averaged over members:
    :math:`\bar r_i = \frac1M \sum_m r_{mi}`. To keep outputs in target units, :math:`\bar r` is
    mapped through the quantile function of the mean prediction: with :math:`q` the sorted values
    of :math:`\bar p_i = \frac1M\sum_m p_{mi}` placed at :math:`0, \frac1{N-1}, \dots, 1`,
    :math:`\hat y_i = \operatorname{interp}(\bar r_i;\ q)` (linear interpolation). The blend thus
    has the mean's distribution and the average order of the members. With ``[M, N, C]``
    probabilities each class column is handled alone (:func:`blend` renormalises rows).
    """
    P = np.asarray(P, dtype=float)
    if P.ndim == 3:
        return np.stack([rank_mean(P[:, :, c]) for c in range(P.shape[2])], axis=1)
    n = P.shape[1]
    if n == 1:
        return P.mean(axis=0)
    ranks = np.stack([(rankdata(p, method="average") - 1) / (n - 1) for p in P])
    quantiles = np.sort(P.mean(axis=0))
    return np.interp(ranks.mean(axis=0), np.linspace(0.0, 1.0, n), quantiles)


def optimize_weights(
    P: np.ndarray, score: Callable[[np.ndarray], float], greater_is_better: bool = False
) -> np.ndarray:
    r"""Simplex weights that optimise ``score(weighted_mean(P, w))`` on the OOF rows.

    Solves :math:`\min_w \pm\,\mathrm{score}(\sum_m w_m p_m)` s.t. :math:`0 \le w_m \le 1,\
    \sum_m w_m = 1` with SLSQP from the equal weights and from each one-hot vector (each
    member alone), and keeps the best result *including the starting points*, so the blend never
    scores worse on the OOF rows than the best single member.
    """
    P = np.asarray(P, dtype=float)
    m = P.shape[0]
    sign = -1.0 if greater_is_better else 1.0

    def project(w: np.ndarray) -> np.ndarray:
        w = np.clip(np.nan_to_num(np.asarray(w, dtype=float)), 0.0, 1.0)
        return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)

    def objective(w: np.ndarray) -> float:
        value = sign * float(score(np.tensordot(project(w), P, axes=1)))
        return value if np.isfinite(value) else 1e300

    starts = [np.full(m, 1.0 / m), *np.eye(m)]
    candidates = list(starts)
    for start in starts:
        result = minimize(
            objective, start, method="SLSQP", bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
            options={"maxiter": 200, "ftol": 1e-10},
        )  # fmt: skip
        candidates.append(project(result.x))
    values = [objective(w) for w in candidates]
    return candidates[int(np.argmin(values))]


def _stacker(name: str, seed: int, classify: bool):
    if name == "ridge":  # L2-regularised linear model: ridge regression, or logistic regression on probabilities
        from sklearn.linear_model import LogisticRegression, Ridge

        return LogisticRegression(C=1.0, max_iter=1000) if classify else Ridge(alpha=1.0)
    if name == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor

        model = LGBMClassifier if classify else LGBMRegressor
        return model(
            n_estimators=100, learning_rate=0.05, num_leaves=7, min_child_samples=5,
            subsample=1.0, colsample_bytree=1.0, deterministic=True, force_row_wise=True,
            n_jobs=1, random_state=seed, verbose=-1,
        )  # fmt: skip
    raise HarnessError(f"Unknown stacker {name!r}, valid stackers: {', '.join(STACKERS)}.")


def stack(
    P_oof: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    P_test: np.ndarray,
    stacker: str = "ridge",
    *,
    log_space: bool = False,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, Any]:
    r"""Level-2 model on the members' predictions, under the members' own folds.

    Regression (``P`` ``[M, N]``): features :math:`x_i = (p_{1i}, \dots, p_{Mi})`
    (:math:`\log(1 + p_{mi})` with ``log_space``, for MSLE-type metrics, the target then
    :math:`\log(1 + y_i)`), a ridge or LightGBM regressor. Classification (``P`` ``[M, N, C]``
    probabilities, ``y`` class codes): features are the ``M × C`` member probabilities, a
    multinomial logistic regression (``"ridge"``: L2-regularised) or a LightGBM classifier, whose
    class probabilities are the blend.

    For each fold :math:`k` the stacker is fitted on the rows of the other folds and predicts fold
    :math:`k`: the stacked OOF prediction of a row never depends on that row's fold's targets. Test
    predictions come from a stacker fitted on all OOF rows, applied to the members' fold-averaged
    test predictions. With ``log_space`` predictions are mapped back by :math:`\exp(\cdot) - 1` and
    clipped at 0.

    Returns ``(oof, test, final_model)``.
    """
    P_oof, P_test = np.asarray(P_oof, dtype=float), np.asarray(P_test, dtype=float)
    classify = P_oof.ndim == 3
    if classify:
        n_classes = P_oof.shape[2]
        X, X_test = (P.transpose(1, 0, 2).reshape(P.shape[1], -1) for P in (P_oof, P_test))
        target = np.asarray(y, dtype=np.int64)
    else:
        X, X_test, target = P_oof.T, P_test.T, np.asarray(y, dtype=float)
    if log_space and not classify:
        X, X_test, target = np.log1p(np.clip(X, 0, None)), np.log1p(np.clip(X_test, 0, None)), np.log1p(target)

    def predict(model, features: np.ndarray) -> np.ndarray:
        if not classify:
            return model.predict(features)
        out = np.zeros((len(features), n_classes))  # classes absent from a fold's rows get probability 0
        out[:, model.classes_] = model.predict_proba(features)
        return out

    folds = np.asarray(folds)
    oof = np.empty((len(target), n_classes)) if classify else np.empty(len(target))
    for k in np.unique(folds):
        inside = folds == k
        model = _stacker(stacker, seed, classify).fit(X[~inside], target[~inside])
        oof[inside] = predict(model, X[inside])
    final = _stacker(stacker, seed, classify).fit(X, target)
    test = predict(final, X_test)
    if log_space and not classify:
        oof, test = np.clip(np.expm1(oof), 0, None), np.clip(np.expm1(test), 0, None)
    return oof, test, final


def blend(
    method: str,
    P_oof: np.ndarray,
    P_test: np.ndarray,
    *,
    y: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    score: Callable[[np.ndarray], float] | None = None,
    greater_is_better: bool = False,
    weights: Sequence[float] | str | None = None,
    stacker: str = "ridge",
    log_space: bool = False,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, list[float] | None]:
    """Apply ``method`` to OOF and test stacks; returns ``(oof, test, weights or None)``.

    ``score(pred) -> float`` scores OOF predictions (needed for ``weights="optimize"``); ``y``
    and ``folds`` are needed for stacking. Class probabilities from ``median`` and
    ``rank_mean`` are renormalised to sum 1 per row.
    """
    P_oof, P_test = np.asarray(P_oof, dtype=float), np.asarray(P_test, dtype=float)
    used: list[float] | None = None
    if method == "mean":
        oof, test = mean(P_oof), mean(P_test)
    elif method == "median":
        oof, test = median(P_oof), median(P_test)
    elif method == "rank_mean":
        oof, test = rank_mean(P_oof), rank_mean(P_test)
    elif method == "weighted_mean":
        if weights is None:
            raise HarnessError("Method weighted_mean needs --weights (one per run, or 'optimize').")
        if isinstance(weights, str) and weights == "optimize":
            if score is None:
                raise HarnessError("weights='optimize' needs a score function.")
            w = optimize_weights(P_oof, score, greater_is_better)
        elif isinstance(weights, str):
            raise HarnessError(f"Weights must be numbers or 'optimize', got {weights!r}.")
        else:
            w = normalise_weights(weights, P_oof.shape[0])
        oof, test, used = weighted_mean(P_oof, w), weighted_mean(P_test, w), [float(v) for v in w]
    elif method == "stacking":
        if y is None or folds is None:
            raise HarnessError("Stacking needs the OOF targets and folds.")
        oof, test, model = stack(P_oof, y, folds, P_test, stacker, log_space=log_space, seed=seed)
        if hasattr(model, "coef_") and P_oof.ndim == 2:  # a regression stacker's weight per member
            used = [float(v) for v in np.ravel(model.coef_)]
    else:
        raise HarnessError(f"Unknown ensemble method {method!r}, valid methods: {', '.join(METHODS)}.")
    if P_oof.ndim == 3 and method in ("median", "rank_mean"):
        oof, test = (a / np.clip(a.sum(axis=1, keepdims=True), 1e-12, None) for a in (oof, test))
    return oof, test, used

r"""k-reciprocal re-ranking of a query x gallery distance matrix (Zhong et al., CVPR 2017).

Re-ID papers report Market-1501 numbers with and without this post-processing, so the harness
scores both (the ``_rerank`` metrics of the ``reid`` task). Two images are close after re-ranking
when their *k-reciprocal neighbourhoods* overlap: sets of images that are among each other's
``k1`` nearest, which are more often the same identity than plain nearest neighbours are.

On the ``N = n_q + n_g`` images of query and gallery together, with ``F`` the full distance matrix
``[[q_q, q_g], [q_g.T, g_g]]`` and, as the reference implementation does, the distance squared and
divided by its column maximum, :math:`d(i, x) = F_{xi}^2 / \max_y F_{yi}^2 \in [0, 1]`:

* :math:`N(i, k)`: the ``k`` nearest of ``i`` by ``d(i, .)``, itself included (``k + 1`` entries);
  :math:`R(i, k) = \{x \in N(i, k) : i \in N(x, k)\}`;
* :math:`R^*(i) = R(i, k_1) \cup \bigcup R(c, \lfloor k_1/2 \rceil)` over the candidates
  :math:`c \in R(i, k_1)` whose own half-size set lies more than 2/3 inside :math:`R(i, k_1)`
  (:math:`\lfloor \cdot \rceil`: round half to even, as ``np.around``);
* :math:`V_{ix} = e^{-d(i,x)} / \sum_{y \in R^*(i)} e^{-d(i,y)}` on :math:`R^*(i)`, zero elsewhere;
  local query expansion replaces row ``i`` by the mean of the rows of its ``k2`` nearest (itself
  included; skipped when ``k2 = 1``);
* Jaccard distance :math:`J(i, g) = 1 - \sum_x \min(V_{ix}, V_{gx}) / \sum_x \max(V_{ix}, V_{gx})`,
  summed over all ``N`` images. The reference writes the union as :math:`2 - \sum_x \min`, which
  is :math:`\sum_x \max` when both rows sum to 1: always, unless an image is not among its own
  nearest (non-zero self-distances) and its set is empty. The reference's form is kept;
* returned: :math:`(1 - \lambda) J(i, g) + \lambda\, d(i, g)` for query ``i`` and gallery ``g``.

**Same numbers as torchreid's** ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``
(and fast-reid's, which is the same code): every step is the reference's float32 arithmetic in the
reference's order (the weight sums by one ``np.sum`` per row, the expansion and Jaccard sums
accumulated in float32 in the reference's order), and the outputs are equal bit for bit (measured
up to 2,000 x 10,000). The one exception is ties: the reference's ``np.argsort`` leaves the order
of equal distances unspecified, here the lower index comes first (a stable ``argsort``), so inputs
with equal distances among a row's nearest can give other sets. ``lambda_value=1`` returns
:math:`d(i, g)`, the *squared* distance divided by the largest squared distance from query ``i``
to any image, query or gallery, not ``q_g`` itself; for non-negative distances it ranks the
gallery exactly as ``q_g`` does. ``lambda_value=0`` returns the Jaccard distance alone.

Cost, where the reference holds several dense ``N x N`` arrays (the distances, their ranks, ``V``
twice) and loops over rows and columns in Python: the ``k`` nearest are selected from one block
of rows at a time (``torch.topk``; no row is sorted), ``V`` is sparse (row ``i`` has
:math:`|R^*(i)| \le (k_1 + 1)(\lfloor k_1/2 \rceil + 2)` entries, at most ``k2`` times as many
after expansion) and the Jaccard sums visit only the pairs that share an image, through an
inverted index. Memory beyond the inputs and the ``[n_q, n_g]`` output: the sparse ``V``,
:math:`O(N k_1^2 k_2)` at worst and much less in practice, plus block temporaries of a fixed size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.metrics import _features, _positive_int

__all__ = ["k_reciprocal_rerank", "rerank_from_features"]

#: Elements in one block temporary (rows x width): bounds the memory of every step.
_BUDGET = 1 << 22
#: Rows of a source tile when columns are copied into rows.
_TILE = 256


# ----------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------


def _matrix(x: Any, name: str) -> np.ndarray:
    """``x`` as a 2-D real numpy array, float32 and float64 kept as they are (squared exactly below)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
        arr = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be array-like, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return arr


def _finite(arr: np.ndarray, name: str) -> None:
    step = max(1, _BUDGET // max(1, arr.shape[1]))
    for s in range(0, arr.shape[0], step):
        if not np.isfinite(arr[s : s + step]).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def _lambda(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"lambda_value must be a real number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"lambda_value must be in [0, 1], got {value}")
    return float(value)  # a Python float: float32 arrays stay float32 when multiplied by it


# ----------------------------------------------------------------------------
# The reference's normalised distance d(i, x), read from the three inputs
# ----------------------------------------------------------------------------


class _Normalised:
    """``d(i, x) = F[x, i]**2 / max_y F[y, i]**2`` without building ``F`` (``N x N``).

    Row ``i`` of ``d`` is column ``i`` of ``F``: ``[q_q[:, i], q_g[i]]`` for a query,
    ``[q_g[:, g], g_g[:, g]]`` for gallery entry ``g = i - n_q``. Squares are those of the
    reference, ``np.power`` in the input's precision then cast to float32: a float32 square is
    correctly rounded, so squaring a float32 value in float64 and rounding gives the same bits.
    """

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.n_q, self.n_g = q_g.shape
        self.n = self.n_q + self.n_g
        self.scale = np.empty(self.n, dtype=np.float32)  # max_y F[y, i]**2, filled by _nearest

    def squared_rows(self, s: int, e: int, out: np.ndarray, wide: np.ndarray | None) -> None:
        """``out[:] = F[:, s:e].T ** 2`` (float32 ``[e - s, N]``); ``wide``: float64 scratch of the same shape.

        The buffers are reused from block to block (a fresh block costs more in page faults than
        the squares), and columns are copied into rows a tile at a time (a strided copy of the
        whole slice is three times slower).
        """
        q = self.n_q
        parts = []  # (source, transposed?, destination rows, destination columns)
        if s < q:
            b = min(e, q)
            parts += [(self.q_q[:, s:b], True, slice(0, b - s), slice(0, q)),
                      (self.q_g[s:b], False, slice(0, b - s), slice(q, None))]
        if e > q:
            a = max(s, q)
            parts += [(self.q_g[:, a - q : e - q], True, slice(a - s, e - s), slice(0, q)),
                      (self.g_g[:, a - q : e - q], True, slice(a - s, e - s), slice(q, None))]
        for src, transposed, r, c in parts:
            dst = out[r, c]
            # the float32 square is the correctly rounded one; a float64 source is squared in float64
            tmp = dst if src.dtype == np.float32 else wide[r, c]
            if transposed:
                for t in range(0, src.shape[0], _TILE):
                    tmp[:, t : t + _TILE] = src[t : t + _TILE].T
            else:
                tmp[...] = src
            np.square(tmp, out=tmp)
            if tmp is not dst:
                dst[...] = tmp

    def pairs(self, i: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``d(i[t], x[t])`` for index arrays ``i``, ``x`` of the same length (float32)."""
        q, raw = self.n_q, np.empty(len(i), dtype=np.float64)
        iq, xq = i < q, x < q
        for mask, src, r, c in ((iq & xq, self.q_q, x, i), (iq & ~xq, self.q_g, i, x - q),
                                (~iq & xq, self.q_g, x, i - q), (~iq & ~xq, self.g_g, x - q, i - q)):
            raw[mask] = src[r[mask], c[mask]]
        return np.square(raw).astype(np.float32) / self.scale[i]

    def query_gallery(self, s: int, e: int) -> np.ndarray:
        """``d(i, n_q + j)`` for queries ``s <= i < e``: ``[e - s, n_g]`` float32."""
        return np.square(self.q_g[s:e], dtype=np.float64).astype(np.float32) / self.scale[s:e, None]


def _smallest(block: np.ndarray, k: int, mask: np.ndarray) -> np.ndarray:
    """The first ``k`` columns of a stable ``argsort`` of each row, without sorting the rows.

    The ``k`` smallest by ``torch.topk``, then ordered by (value, index). Only a row whose
    ``k``-th value is tied with an entry left out can differ from the stable prefix: those rows
    are sorted. ``mask``: boolean scratch of ``block``'s shape.
    """
    if k >= block.shape[1]:
        return np.argsort(block, axis=1, kind="stable")
    vals, part = torch.topk(torch.from_numpy(block), k, dim=1, largest=False, sorted=False)
    vals, part = vals.numpy(), part.numpy()
    idx = np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)
    np.less_equal(block, vals.max(axis=1)[:, None], out=mask)
    for r in np.flatnonzero(np.count_nonzero(mask, axis=1) > k):
        idx[r] = np.argsort(block[r], kind="stable")[:k]
    return idx


def _nearest(d: _Normalised, k: int) -> np.ndarray:
    """``[N, k]``: each image's ``k`` nearest by ``d``, nearest first; fills ``d.scale``."""
    top = np.empty((d.n, k), dtype=np.int64)
    step = min(d.n, max(1, _BUDGET // d.n))
    block = np.empty((step, d.n), dtype=np.float32)
    mask = np.empty((step, d.n), dtype=bool)
    wide = None if all(a.dtype == np.float32 for a in (d.q_g, d.q_q, d.g_g)) else np.empty((step, d.n))
    for s in range(0, d.n, step):
        e = min(d.n, s + step)
        rows = block[: e - s]
        d.squared_rows(s, e, rows, None if wide is None else wide[: e - s])
        scale = rows.max(axis=1)
        if not scale.all():
            i = s + int(np.flatnonzero(scale == 0)[0])
            what = f"query {i}" if i < d.n_q else f"gallery entry {i - d.n_q}"
            raise ValueError(f"{what} is at distance 0 from every query and gallery entry: "
                             "the distances cannot be normalised by their maximum")  # fmt: skip
        d.scale[s:e] = scale
        np.divide(rows, scale[:, None], out=rows)
        top[s:e] = _smallest(rows, k, mask[: e - s])
    return top


# ----------------------------------------------------------------------------
# k-reciprocal sets, V, query expansion, Jaccard
# ----------------------------------------------------------------------------


def _reciprocal(nb: np.ndarray) -> np.ndarray:
    """``[N, k]`` mask: ``i`` is among the ``k`` nearest of its ``a``-th nearest ``nb[i, a]``."""
    n, k = nb.shape
    out = np.empty((n, k), dtype=bool)
    step = max(1, _BUDGET // (k * k))
    for s in range(0, n, step):
        rows = nb[s : s + step]
        out[s : s + step] = (nb[rows] == np.arange(s, s + len(rows))[:, None, None]).any(axis=2)
    return out


def _expanded_sets(top: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """``R*(i)`` for every image: (row, column) pairs, by row then column."""
    n = top.shape[0]
    nb, nb_h = top[:, : min(k1 + 1, n)], top[:, : min(round(k1 / 2) + 1, n)]
    k, h = nb.shape[1], nb_h.shape[1]
    recip, recip_h = _reciprocal(nb), _reciprocal(nb_h)
    size_h = recip_h.sum(axis=1)  # |R(c, k1/2)|
    rows, cols = [], []
    step = max(1, _BUDGET // (k * h * k))
    for s in range(0, n, step):
        e = min(n, s + step)
        own = np.where(recip[s:e], nb[s:e], -1)  # R(i, k1), -1 elsewhere
        cand = nb[s:e]
        half = np.where(recip_h[cand], nb_h[cand], -2)  # [b, k, h]: R(c, k1/2), -2 elsewhere
        inside = (half[..., None] == own[:, None, None, :]).any(axis=3).sum(axis=2)
        # the reference's float test, `len(intersection) > 2. / 3 * len(candidate set)`
        accept = recip[s:e] & (inside > 2.0 / 3 * size_h[cand])
        members = np.concatenate([own, np.where(accept[..., None], half, -1).reshape(e - s, -1)], axis=1)
        members[members < 0] = n  # sorts last
        members.sort(axis=1)
        keep = members < n
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]  # first of equal values
        r, c = np.nonzero(keep)
        rows.append(r + s)
        cols.append(members[r, c])
    return np.concatenate(rows), np.concatenate(cols)


def _ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(starts[t], starts[t] + counts[t])``."""
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))


def _weights(d: _Normalised, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """V's entries: ``exp(-d)`` over each row's set, divided by the row's float32 ``np.sum``."""
    w = np.exp(-d.pairs(rows, cols))
    ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=d.n))])
    # one np.sum per row: its pairwise float32 summation is the reference's (reduceat's is not)
    sums = np.array([np.sum(w[ptr[i] : ptr[i + 1]]) for i in range(d.n)], dtype=np.float32)
    return w / sums[rows]


def _expand(top: np.ndarray, k2: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local query expansion: row ``i`` becomes the mean of the rows of its ``k2`` nearest.

    Summed in float32 in neighbour order and divided by ``k2``, as the reference's ``np.mean`` over
    axis 0 does.
    """
    n = top.shape[0]
    nb = top[:, :k2]
    counts = np.bincount(rows, minlength=n)
    ptr = np.cumsum(counts) - counts
    out_r, out_c, out_v = [], [], []
    step = max(1, _BUDGET // (k2 * max(1, int(counts.max()))))
    for s in range(0, n, step):
        e = min(n, s + step)
        keys, vs, js = [], [], []
        for j in range(k2):  # the (row, column) keys neighbour j contributes to, and its values
            r = nb[s:e, j]
            pos = _ragged(ptr[r], counts[r])
            keys.append(np.repeat(np.arange(e - s) * n, counts[r]) + cols[pos])
            vs.append(vals[pos])
            js.append(np.full(len(pos), j))
        key, v, j = np.concatenate(keys), np.concatenate(vs), np.concatenate(js)
        uniq, inverse = np.unique(key, return_inverse=True)
        terms = np.zeros((len(uniq), k2), dtype=np.float32)  # [pair, neighbour]; 0 where it has none
        terms[inverse.reshape(-1), j] = v
        acc = terms[:, 0].copy()
        for t in range(1, k2):  # neighbour by neighbour, as the reference's rows are added
            acc += terms[:, t]
        out_r.append(uniq // n + s)
        out_c.append(uniq % n)
        out_v.append(acc / k2)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)


def _jaccard_into(out: np.ndarray, n_q: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    """``out[i, g] = J(i, n_q + g)``: sums of ``min(V_ix, V_gx)`` over the images ``x`` both hold.

    An inverted index (for each image ``x``, the gallery rows holding it) visits only those pairs;
    ``np.add.at`` accumulates in float32 in ascending ``x``, the reference's order.
    """
    n_g = out.shape[1]
    gal = rows >= n_q
    order = np.argsort(cols[gal], kind="stable")
    g_rows, g_cols, g_vals = rows[gal][order] - n_q, cols[gal][order], vals[gal][order]
    n = n_q + n_g
    col_counts = np.bincount(g_cols, minlength=n)
    col_start = np.cumsum(col_counts) - col_counts
    q_ptr = np.searchsorted(rows, np.arange(n_q + 1))  # rows are sorted: queries' entries come first
    work = np.concatenate([[0], np.cumsum(col_counts[cols[: q_ptr[-1]]])])  # pairs visited, cumulated
    s = 0
    while s < n_q:
        e = s + 1  # as many queries as the budget allows, at least one
        while e < n_q and work[q_ptr[e + 1]] - work[q_ptr[s]] <= _BUDGET and (e + 1 - s) * n_g <= _BUDGET:
            e += 1
        a, b = q_ptr[s], q_ptr[e]
        x, v = cols[a:b], vals[a:b]
        cnt = col_counts[x]
        pos = _ragged(col_start[x], cnt)
        target = np.repeat((rows[a:b] - s) * n_g, cnt) + g_rows[pos]
        t = out[s:e]
        t[:] = 0
        np.add.at(t.reshape(-1), target, np.minimum(np.repeat(v, cnt), g_vals[pos]))
        t[:] = 1 - t / (2.0 - t)
        s = e


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def k_reciprocal_rerank(
    q_g: Any,
    q_q: Any,
    g_g: Any,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    r"""Re-ranked query x gallery distances, float32 ``[n_q, n_g]`` (torchreid's ``re_ranking``).

    ``q_g`` ``[n_q, n_g]``, ``q_q`` ``[n_q, n_q]`` and ``g_g`` ``[n_g, n_g]`` are distances (numpy
    arrays or tensors; torchreid passes squared Euclidean or cosine distances). They are squared
    first, as the reference does, so their sign is lost: pass non-negative distances. ``k1``: size
    of the reciprocal neighbourhoods (20 in the paper), ``k2``: query-expansion size (6),
    ``lambda_value``: weight of the original distance (0.3). Definitions, cost and how closely this
    matches torchreid: see the module docstring. Lower is nearer, as in ``q_g``: evaluate with
    :func:`harness.metrics.reid_from_distances`.
    """
    k1, k2 = _positive_int(k1, "k1"), _positive_int(k2, "k2")
    lam = _lambda(lambda_value)
    qg, qq, gg = _matrix(q_g, "q_g"), _matrix(q_q, "q_q"), _matrix(g_g, "g_g")
    n_q, n_g = qg.shape
    if n_q == 0 or n_g == 0:
        raise ValueError(f"q_g must have at least one query and one gallery entry, got shape {qg.shape}")
    if qq.shape != (n_q, n_q):
        raise ValueError(f"q_q must have shape ({n_q}, {n_q}) (n_q = q_g.shape[0]), got {qq.shape}")
    if gg.shape != (n_g, n_g):
        raise ValueError(f"g_g must have shape ({n_g}, {n_g}) (n_g = q_g.shape[1]), got {gg.shape}")
    for arr, name in ((qg, "q_g"), (qq, "q_q"), (gg, "g_g")):
        _finite(arr, name)

    d = _Normalised(qg, qq, gg)
    n = d.n
    top = _nearest(d, min(n, max(k1 + 1, k2)))
    rows, cols = _expanded_sets(top, k1)
    vals = _weights(d, rows, cols)
    if k2 != 1:  # the reference skips the expansion only for k2 == 1
        rows, cols, vals = _expand(top, min(k2, n), rows, cols, vals)
    out = np.empty((n_q, n_g), dtype=np.float32)
    _jaccard_into(out, n_q, rows, cols, vals)
    step = max(1, _BUDGET // n_g)
    for s in range(0, n_q, step):
        e = min(n_q, s + step)
        out[s:e] = out[s:e] * (1 - lam) + d.query_gallery(s, e) * lam
    return out


def _distance_matrix(a: torch.Tensor, b: torch.Tensor, metric: str) -> np.ndarray:
    sim = a @ b.T
    if metric == "cosine":
        dist = 1.0 - sim
    else:  # squared Euclidean; rounding can take it just below 0
        dist = ((a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * sim).clamp_(min=0.0)
    return dist.cpu().numpy()


def rerank_from_features(
    query_features: Any,
    gallery_features: Any,
    *,
    metric: str = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    r"""Re-ranked distances from features: the three matrices, then :func:`k_reciprocal_rerank`.

    ``metric="euclidean"``: squared Euclidean distance (torchreid's ``compute_distance_matrix``,
    clamped at 0), ``"cosine"``: :math:`1 - \hat q^\top \hat g` on L2-normalised features.
    Computed on the device of ``query_features``, in its precision (float32 unless float64).
    Holds the three matrices, :math:`(n_q + n_g)^2` floats.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    qf = _features(query_features, "query_features")
    gf = _features(gallery_features, "gallery_features", qf.device).to(qf.dtype)
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"query_features and gallery_features must have the same dim, got {qf.shape[1]} and {gf.shape[1]}"
        )
    if metric == "cosine":
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    with torch.no_grad():
        q_g, q_q, g_g = (_distance_matrix(a, b, metric) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    return k_reciprocal_rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)

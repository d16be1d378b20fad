"""Matching two sets of footprints by the Pearson correlation of their images (spec §11.3, §1.4).

Used by partition stitching (``regression_only``: map the found cells back onto ``S_init``, §1.4) and by
:mod:`nwb_extract.metrics` (matching to ground truth). Footprint sets follow the engine's cells-first
convention: an array ``(K, ...)`` whose first axis indexes cells and whose remaining axes (``(H, W)`` for images,
``(P,)`` for flattened pixels) are flattened into pixels. Only :func:`pearson_columns` takes pixel-by-cell
matrices ``(P, K)``, as the spec's ``pearson_cols`` does. :func:`find_conncomp` groups the columns of one set
by their correlation (duplicates within a partition, §7.4, and across partition seams, §1.4).
"""

from __future__ import annotations

import math
from typing import Any

from nwb_extract.engine import backend


def pearson_columns(X: Any, Y: Any = None, *, xp: Any = None, dtype: Any = None, overwrite: bool = False) -> Any:
    """Pearson correlation between the columns of ``X`` and the columns of ``Y`` (spec §0 ``pearson_cols``).

    Population z-scores (ddof = 0) as in EXTRACT's ``match_sets``. A constant column (``max == min``, checked
    exactly so a float32 mean that misses a constant by an ulp cannot produce noise correlations) has no defined
    correlation and gets 0 against everything, so the result never contains NaN.

    Parameters
    ----------
    X : real array of shape (P, K1)
        One variable per column (e.g. footprints as pixels x cells).
    Y : real array of shape (P, K2), optional
        Second set, same namespace and number of rows; ``None`` correlates ``X`` with itself.
    xp : namespace, optional
        Array namespace, when the caller already has it.
    dtype : optional
        Precision of the result; default float64 when an input is float64, else float32. (The arithmetic is float64
        either way: a float32 input asked for a float64 result gives the values of its float64 cast, without that
        cast.)
    overwrite : bool
        ``X`` is a float64 array the caller gives up (``Y`` None): it is centred in place instead of in a copy.

    Returns
    -------
    C : array of shape (K1, K2)
        ``C[i, j] = corr(X[:, i], Y[:, j])`` in [-1, 1].
    """
    xp, device = backend.get_namespace_and_device(X, Y, xp=xp)
    if Y is None:
        Y = X
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"need X (P, K1) and Y (P, K2) with the same P; got {X.shape} and {Y.shape}")
    if dtype is None:
        dtype = xp.float64 if xp.float64 in (X.dtype, Y.dtype) else xp.float32
    centred_x, norm_x = _centred_columns(X, xp, overwrite=overwrite and Y is X)
    centred_y, norm_y = (centred_x, norm_x) if Y is X else _centred_columns(Y, xp)
    scale = norm_x[:, None] * norm_y[None, :]
    # zero-norm (constant) columns: 0 against everything
    C = xp.where(scale > 0, (xp.matrix_transpose(centred_x) @ centred_y) / xp.where(scale > 0, scale, 1.0), 0.0)
    return xp.astype(xp.clip(C, -1.0, 1.0), dtype)


def _centred_columns(X: Any, xp: Any, overwrite: bool = False) -> tuple[Any, Any]:
    """Columns of ``X`` centred, in float64 (P, K), and their Euclidean norms (K,); an exactly constant column
    (``max == min``) gets norm 0. One float64 copy of ``X`` (``X`` itself with ``overwrite`` when it is float64),
    centred in place; the correlations are then one matrix product (the K x K Gram matrix of the centred columns)."""
    varies = xp.max(X, axis=0) > xp.min(X, axis=0)
    centred = X if overwrite and X.dtype == xp.float64 else xp.astype(X, xp.float64, copy=True)
    centred -= xp.mean(centred, axis=0, keepdims=True)
    norm = xp.sqrt(xp.vecdot(centred, centred, axis=-2))
    return centred, xp.where(varies, norm, 0.0)


def footprint_correlation(F1: Any, F2: Any, *, xp: Any = None) -> Any:
    """Pearson correlation matrix between two footprint sets (cells first).

    Parameters
    ----------
    F1 : real array of shape (K1, ...)
        First set; axes after the first are flattened into pixels (``(K1, H, W)`` or ``(K1, P)``).
    F2 : real array of shape (K2, ...)
        Second set, same pixel count.

    Returns
    -------
    C : array of shape (K1, K2)
        Image correlations, see :func:`pearson_columns`.
    """
    xp, _ = backend.get_namespace_and_device(F1, F2, xp=xp)
    if F1.ndim < 2 or F2.ndim < 2 or F1.shape[1:] != F2.shape[1:]:
        raise ValueError(f"footprint sets must be (K, ...) with the same image shape; got {F1.shape} and {F2.shape}")
    return pearson_columns(_pixels_by_cells(F1, xp), _pixels_by_cells(F2, xp), xp=xp)


def _pixels_by_cells(F: Any, xp: Any) -> Any:
    """``(K, ...)`` footprints as a ``(P, K)`` matrix."""
    return xp.permute_dims(xp.reshape(F, (F.shape[0], math.prod(F.shape[1:]))), (1, 0))


def match_sets(F1: Any, F2: Any, threshold: float, *, xp: Any = None) -> Any:
    """EXTRACT's greedy footprint matching (``match_sets``, spec §11.3).

    Repeatedly takes the largest remaining image correlation, stops when it is ``<= threshold``, records the
    pair and removes its row and column. Ties go to the first entry in MATLAB's column-major order of the
    ``(K1, K2)`` matrix (lowest ``F2`` index, then lowest ``F1`` index). Pairs are sorted by ``F1`` index.

    Parameters
    ----------
    F1 : real array of shape (K1, ...)
        First footprint set (cells first; ``(K1, H, W)`` or ``(K1, P)``).
    F2 : real array of shape (K2, ...)
        Second footprint set, same namespace and image shape.
    threshold : float
        Correlations ``<= threshold`` are never matched; must be >= 0 (as in EXTRACT, where removed entries are
        set to 0, a negative threshold would re-match them).

    Returns
    -------
    pairs : int64 array of shape (M, 2)
        ``[index in F1, index in F2]``, 0-based, sorted by the first column; same namespace/device as the inputs.
    """
    xp, device = backend.get_namespace_and_device(F1, F2, xp=xp)
    _check_threshold(threshold)
    corr = footprint_correlation(F1, F2, xp=xp)
    n1, n2 = corr.shape
    # candidates in the order the greedy loop would visit them: descending value, ties in column-major order
    column_major = xp.reshape(xp.permute_dims(corr, (1, 0)), (-1,))
    order = xp.argsort(-column_major, stable=True)
    n_above = int(xp.sum(xp.astype(column_major > threshold, xp.int64)))
    # host step: the greedy selection is sequential over at most K1*K2 small integers
    candidates = backend.to_numpy(order[:n_above]).tolist()
    used1, used2, pairs = set(), set(), []
    for flat in candidates:
        i, j = flat % n1, flat // n1
        if i in used1 or j in used2:
            continue
        used1.add(i)
        used2.add(j)
        pairs.append((i, j))
        if len(pairs) == min(n1, n2):
            break
    flat_pairs = [index for pair in sorted(pairs) for index in pair]
    return xp.reshape(xp.asarray(flat_pairs, dtype=xp.int64, device=device), (len(pairs), 2))


def match_optimal(F1: Any, F2: Any, threshold: float, *, xp: Any = None) -> tuple[Any, Any]:
    """Optimal one-to-one footprint matching: maximum total correlation over pairs above ``threshold``.

    Hungarian assignment (:func:`backend.linear_sum_assignment`, a host step) on the correlation matrix with
    every entry ``<= threshold`` replaced by 0, then only pairs with correlation ``> threshold`` are kept. The
    replacement makes the optimum the best matching among admissible pairs: the solver can never give up an
    above-threshold pair to gain a sub-threshold (or negative) one that would be discarded afterwards.

    Parameters
    ----------
    F1 : real array of shape (K1, ...)
        First footprint set (cells first; ``(K1, H, W)`` or ``(K1, P)``).
    F2 : real array of shape (K2, ...)
        Second footprint set, same namespace and image shape.
    threshold : float
        Pairs with correlation ``<= threshold`` are not matched; must be >= 0.

    Returns
    -------
    pairs : int64 array of shape (M, 2)
        ``[index in F1, index in F2]``, 0-based, sorted by the first column.
    corr : array of shape (M,)
        Image correlation of each pair (dtype of :func:`pearson_columns`).
    """
    xp, _ = backend.get_namespace_and_device(F1, F2, xp=xp)
    _check_threshold(threshold)
    corr = footprint_correlation(F1, F2, xp=xp)
    n2 = corr.shape[1]
    admissible = xp.where(corr > threshold, corr, xp.zeros_like(corr))
    rows, cols = backend.linear_sum_assignment(-admissible)
    values = xp.take(xp.reshape(corr, (-1,)), rows * n2 + cols)
    keep = values > threshold
    pairs = xp.stack((rows[keep], cols[keep]), axis=1)
    return pairs, values[keep]


def find_conncomp(X: Any, threshold: float, A2: Any = None) -> tuple[list[tuple[int, ...]], Any]:
    """Groups of columns of ``X`` linked by correlation above ``threshold`` (spec §7.4, EXTRACT ``find_conncomp``).

    ``C = (X^T X - n mu mu^T) / ((|x_i| + 1e-6)(|x_j| + 1e-6))`` (centred norms), adjacency ``A = C > threshold``
    (the diagonal included), ``A &= A2`` when given; connected components of the undirected graph, numbered by
    their smallest member. For each component with at least 2 members, the *hub* (largest column sum of ``A``,
    first on ties) goes last: ``order = [other members ascending..., hub]``.

    Parameters
    ----------
    X : array (m, K) — one variable per column (images, or mixed traces).
    threshold : float — correlation threshold.
    A2 : bool array (K, K), optional — extra adjacency constraint (spatial overlap).

    Returns
    -------
    groups : list of tuples of int — 0-based column indices per component (>= 2 members), in the order above.
    A : bool array (K, K) — the adjacency, in ``X``'s namespace.
    """
    xp = backend.get_namespace(X)
    X = xp.astype(X, xp.float64, copy=False)  # read only: a float64 X is used as it is
    m = X.shape[0]
    mean = xp.mean(X, axis=0)
    gram = xp.matrix_transpose(X) @ X - m * (mean[:, None] * mean[None, :])
    norms = xp.sqrt(xp.clip(xp.linalg.diagonal(gram), min=0.0)) + 1e-6
    A = gram / (norms[:, None] * norms[None, :]) > threshold
    if A2 is not None:
        A = A & xp.astype(A2, xp.bool)
    # host step: components of a K x K graph (K cells) are sequential bookkeeping on small integers
    adjacency = backend.to_numpy(A).tolist()
    return _ordered_components(adjacency), A


def _ordered_components(adjacency: list[list[bool]]) -> list[tuple[int, ...]]:
    K = len(adjacency)
    label = [-1] * K
    groups = []
    for seed in range(K):
        if label[seed] >= 0:
            continue
        label[seed] = seed
        members, frontier = [seed], [seed]
        while frontier:
            node = frontier.pop()
            for other in range(K):
                if label[other] < 0 and (adjacency[node][other] or adjacency[other][node]):
                    label[other] = seed
                    members.append(other)
                    frontier.append(other)
        if len(members) < 2:
            continue
        members.sort()
        degree = [sum(adjacency[row][j] for row in range(K)) for j in members]
        hub = members[degree.index(max(degree))]
        groups.append(tuple(j for j in members if j != hub) + (hub,))
    return groups


def _check_threshold(threshold: float) -> None:
    if not threshold >= 0:
        raise ValueError(f"threshold must be a correlation >= 0, got {threshold!r}")

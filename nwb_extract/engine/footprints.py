"""Footprint helpers shared by the stages: layout of image sets, column normalisation, cell area (spec §0).

Also the check that a frame shape fits an image set (:func:`check_frame_shape`).

A set of K cell images is either the matrix ``S`` (P, K), one column per cell with row-major pixels
``p = row * w + col`` of ``frame_shape = (h, w)``, or the stack (K, h, w). Arrays stay in their namespace and on
their device.
"""

from __future__ import annotations

from typing import Any

from nwb_extract.engine import backend
from nwb_extract.errors import InputError

#: Floor of a column maximum in :func:`normalize_to_one`.
NORMALIZE_FLOOR = 1e-6
#: Image value above which a pixel counts towards a cell's area (:func:`cell_area`).
AREA_THRESHOLD = 0.1


def to_stack(S: Any, frame_shape: tuple[int, int]) -> Any:
    """Images as a stack: (P, K) -> (K, h, w)."""
    xp = backend.get_namespace(S)
    return xp.reshape(xp.permute_dims(S, (1, 0)), (S.shape[1], *frame_shape))


def to_columns(stack: Any) -> Any:
    """Images as columns: (K, h, w) -> (P, K), row-major pixels."""
    xp = backend.get_namespace(stack)
    return xp.permute_dims(xp.reshape(stack, (stack.shape[0], -1)), (1, 0))


def normalize_to_one(S: Any) -> Any:
    """Each column divided by ``max(1e-6, column max)`` (spec §0 ``normalize_to_one``); (P, K) -> (P, K)."""
    xp = backend.get_namespace(S)
    return S / xp.clip(xp.max(S, axis=0), min=NORMALIZE_FLOOR)[None, :]


def cell_area(S: Any, threshold: float = AREA_THRESHOLD) -> Any:
    """Pixels per column with ``S > threshold`` (spec §0 ``cell_area``): (P, K) -> int64 (K,)."""
    xp = backend.get_namespace(S)
    return xp.astype(xp.count_nonzero(S > threshold, axis=0), xp.int64)


def check_frame_shape(S: Any, frame_shape: tuple[int, int]) -> tuple[int, int]:
    """``frame_shape`` as ints ``(h, w)``, checked against the ``P = h w`` rows of ``S`` (P, K)."""
    h, w = (int(v) for v in frame_shape)
    if h * w != S.shape[0]:
        raise InputError(f"frame_shape {(h, w)} has {h * w} pixels but the images have {S.shape[0]} rows; pass the "
                         "(rows, cols) the images were flattened from (row-major)")
    return h, w

"""Scalar MATLAB semantics the port must replicate (spec §0) for host-side bookkeeping (tile counts, sizes)."""

from __future__ import annotations

import math


def matlab_round(x: float) -> int:
    """MATLAB ``round``: halves away from zero (2.5 -> 3, -2.5 -> -3); never Python's banker's ``round``."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))

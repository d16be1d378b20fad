"""MATLAB semantics the port must replicate (spec §0): scalar rounding for host-side bookkeeping (tile counts,
sizes) and array division by zero (:func:`matlab_divide`, in any Array API namespace ``xp``)."""

from __future__ import annotations

import math
from typing import Any


def matlab_round(x: float) -> int:
    """MATLAB ``round``: halves away from zero (2.5 -> 3, -2.5 -> -3); never Python's banker's ``round``."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def matlab_divide(num: Any, den: Any, xp: Any) -> Any:
    """``num / den`` with MATLAB's zero division (x/0 = +-inf, 0/0 = NaN) and no floating-point warnings."""
    safe = xp.where(den == 0, xp.ones_like(den), den)
    by_zero = xp.where(num > 0, xp.full_like(num, math.inf),
                       xp.where(num < 0, xp.full_like(num, -math.inf), xp.full_like(num, math.nan)))
    return xp.where(den == 0, by_zero, num / safe)

"""High-frequency noise estimate of traces (spec §4).

The noise standard deviation of a trace is read from the upper half of its power spectrum, where slow calcium
transients carry almost no power: for white noise of variance s² every periodogram bin has expectation s², so the
square root of the mean high-frequency power is an estimate of s that ignores the signal.
"""

from __future__ import annotations

import math
from typing import Any

from nwb_extract.engine import backend, solver_kernels
from nwb_extract.errors import InputError

#: Fraction of the one-sided spectrum below which bins are ignored (EXTRACT's ``cutoff_freq = 0.5``).
_CUTOFF_FRACTION = 0.5

#: Default bound on the number of samples transformed at once (4 Mi: a ~16 MiB float32 block, bounded spectrum).
_CHUNK_ELEMENTS = 2**22


def estimate_noise_std(x: Any, axis: int = -1, *, chunk_elements: int = _CHUNK_ELEMENTS) -> Any:
    """Noise standard deviation of every trace of ``x`` along ``axis`` (spec §4, EXTRACT ``estimate_noise_std``).

    For a trace of length n: ``X = FFT(x)``, ``Nh = ceil(n/2)``, power ``p_k = |X_k|²`` for ``k < Nh`` with
    ``p_0`` halved, normalised by ``2·Nh``; the estimate is the square root of the mean of the bins
    ``k = round(0.5·Nh) - 1 … Nh - 1`` (MATLAB's 1-based ``round``, halves away from zero).

    Parameters
    ----------
    x : array of any real dtype and any shape with ``n = x.shape[axis] >= 1``
        The traces, e.g. a ``(frames, pixels)`` float32 movie matrix ``Mt`` read along ``axis=0``. Integer input is
        converted to float32.
    axis : int, default -1
        The time axis.
    chunk_elements : int, keyword-only
        Traces are transformed in groups of at most ``max(1, chunk_elements // n)`` to bound memory; the result
        does not depend on it.

    Returns
    -------
    sigma : array of shape ``x.shape`` without ``axis``
        Noise standard deviation in the units of ``x``; float32 for float32 or integer input, float64 for float64
        input. Same namespace and device as ``x``.
    """
    xp, device = backend.get_namespace_and_device(x)
    ndim = len(x.shape)
    if ndim == 0:
        raise InputError("estimate_noise_std needs at least a 1-D array of samples, got a scalar")
    axis = axis % ndim
    n = x.shape[axis]
    if n == 0:
        raise InputError(f"estimate_noise_std needs traces of length >= 1; axis {axis} of shape {x.shape} is empty")
    if not xp.isdtype(x.dtype, "real floating"):
        x = xp.astype(x, xp.float32)
    other_shape = tuple(s for i, s in enumerate(x.shape) if i != axis)
    traces = xp.reshape(xp.moveaxis(x, axis, 0), (n, -1))  # (n, m): one trace per column
    m = traces.shape[1]
    step = max(1, chunk_elements // n)
    if m <= step:  # one group (e.g. one trace): no buffer, no thread map
        return xp.reshape(_noise_std_columns(xp, traces), other_shape)
    sigma = xp.empty((m,), dtype=x.dtype, device=device)

    def estimate(start: int) -> None:
        stop = min(m, start + step)
        sigma[start:stop] = _noise_std_columns(xp, traces[:, start:stop])

    # groups of traces side by side on the host's cores (the same values)
    solver_kernels.map_in_threads(estimate, list(range(0, m, step)), xp)
    return xp.reshape(sigma, other_shape)


def _noise_std_columns(xp: Any, traces: Any) -> Any:
    """Spec §4 on the columns of a ``(n, m)`` real array; returns ``(m,)`` of the same dtype."""
    n = traces.shape[0]
    n_half = math.ceil(n / 2)
    # MATLAB round(0.5 * Nh) (argument >= 0, so floor(v + 0.5) is round-half-away); 1-based -> 0-based.
    first_bin = max(math.floor(_CUTOFF_FRACTION * n_half + 0.5) - 1, 0)
    # the kept bins first_bin .. ceil(n/2) - 1 of the full FFT (the power of the others is never formed)
    spectrum = backend.fft(xp).rfft(traces, axis=0)[first_bin:n_half, :]
    power = xp.real(spectrum) ** 2 + xp.imag(spectrum) ** 2
    if first_bin == 0:  # the halved zero-frequency bin is kept only for n <= 4
        power = xp.concat([power[:1, :] / 2, power[1:, :]], axis=0)
    kept = power / (2 * n_half)
    return xp.astype(xp.sqrt(xp.mean(kept, axis=0)), traces.dtype)

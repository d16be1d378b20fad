"""Exception types of nwb_extract: every error a user can meet is a subclass of :class:`NwbExtractError`."""

from __future__ import annotations


class NwbExtractError(Exception):
    """Base class of every error raised on purpose by nwb_extract (the CLI prints its message as one line)."""


class ConfigError(NwbExtractError, ValueError):
    """An EXTRACT config key, type or value is invalid; the message names the key and the fix."""


class InputError(NwbExtractError, ValueError):
    """The movie or another input array has the wrong shape, dtype or content."""


class BackendError(NwbExtractError, RuntimeError):
    """The requested array backend (e.g. CuPy) or device is not available."""


class NotImplementedYetError(NwbExtractError, NotImplementedError):
    """A documented feature whose implementation has not landed yet (never returns fake data)."""

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


class SourceNotFoundError(InputError):
    """The input file, folder or URL does not exist (the CLI's exit code 4)."""


class ConfigFileNotFoundError(SourceNotFoundError, ConfigError):
    """The config file named by the user does not exist (a missing input and a config error alike)."""


class NotNwbError(InputError):
    """The input exists but is not an NWB file (neither NWB HDF5 nor an NWB Zarr store)."""


class NoImagingSeriesError(InputError):
    """The NWB file holds no TwoPhotonSeries or OnePhotonSeries."""


class SeriesNotFoundError(InputError):
    """The series named by the user is not in the file (the message lists the imaging series that are)."""


class AmbiguousSeriesError(InputError):
    """Several imaging series match and none was chosen (the message lists them)."""


class UnsupportedSeriesError(InputError):
    """The chosen series cannot be read as a movie: volumetric (4-D) data or frames in external files."""


class UnknownConfigKeyError(ConfigError):
    """A config key is not an EXTRACT (or Python-only) parameter name."""


class OutputExistsError(NwbExtractError):
    """The output file exists already and replacing it was not asked for (``overwrite``)."""


class OutputNotWritableError(NwbExtractError):
    """The output cannot be written: missing or read-only folder, a folder at the path, or a read-only input."""


class RemoteReadError(InputError):
    """Reading a remote asset failed after retries with backoff (network failure, server error)."""


class AuthenticationRequiredError(InputError):
    """The DANDI server refused the request: the dandiset is embargoed and needs ``DANDI_API_KEY``."""


class ResourceError(NwbExtractError, RuntimeError):
    """A partition does not fit the memory a worker has (the message names both sizes and what to change)."""

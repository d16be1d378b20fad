"""Package version, read from the installed distribution's metadata (pyproject.toml is the one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nwb-extract")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: Version of the EXTRACT algorithm the engine follows (the reference implementation's ``info.version``).
ENGINE_VERSION = "EXTRACT 1.3.0"

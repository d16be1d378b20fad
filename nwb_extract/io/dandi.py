"""DANDI inputs: resolve archive addresses to assets, list a dandiset's assets, open them for streaming.

Accepted inputs (docs/dandi.md):

- ``dandi://<instance>/<dandiset>[@<version>]/<path>`` (``instance`` a name known to the dandi client, e.g.
  ``dandi`` or ``dandi-sandbox``);
- ``DANDI:<dandiset>[/<version>]`` with the asset path given separately (``--path``);
- DANDI API asset URLs, by path (``https://<api>/dandisets/<id>/versions/<v>/assets/?path=<p>``) or by asset id
  (``https://<api>[/dandisets/<id>/versions/<v>]/assets/<asset_id>[/download/]``);
- plain ``http(s)://`` and ``s3://`` URLs of an NWB file (not resolved through an API).

Assets are resolved with the dandi client (``DandiAPIClient``, ``get_asset_by_path``, ``get_content_url``; the
``DANDI_API_KEY`` environment variable authenticates for embargoed data) and read by streaming: HDF5 files through
``remfile`` (byte ranges; optional on-disk chunk cache), ``.nwb.zarr`` assets through hdmf-zarr. Nothing is
downloaded whole. The API address of every instance can be replaced with the environment variable
:data:`API_URL_ENV` (a mirror, or a local stand-in in tests). The batch manifest is read and written here; running
EXTRACT on assets is :mod:`nwb_extract.workflow`'s job (this module never imports the engine).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from nwb_extract.errors import (AuthenticationRequiredError, InputError, RemoteReadError,
                                 SourceNotFoundError)
from nwb_extract.io.atomic import atomic_path
from nwb_extract.io.remote import RemoteFile, network_errors

__all__ = [
    "API_URL_ENV", "MANIFEST_NAME", "AuthenticationRequiredError", "BatchEntry", "RemoteAsset", "RemoteReadError",
    "derived_file_name", "is_dandi_input",
    "list_assets", "load_manifest", "open_asset", "resolve_asset", "save_manifest",
]

#: Environment variable that replaces the API URL of every DANDI instance (e.g. ``http://127.0.0.1:8000/api``).
API_URL_ENV = "NWB_EXTRACT_DANDI_API_URL"
#: Name of the batch manifest written in the output folder.
MANIFEST_NAME = "nwb-extract-manifest.json"
#: Text inserted into a derived file name (docs/dandi.md, "Derived file names").
DERIVED_ENTITY = "desc-extract"

_NWB_SUFFIXES = (".nwb", ".nwb.zarr")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_DANDI_URI = re.compile(r"dandi://(?P<instance>[^/]+)/(?P<id>\d{6})(?:@(?P<version>[^/]+))?(?:/(?P<path>.*))?")
_DANDI_ID = re.compile(r"(?i:dandi):(?P<id>\d{6})(?:/(?P<version>[^/]+))?/?")
_API_BY_PATH = re.compile(r"(?P<api>.+?)/dandisets/(?P<id>\d{6})/versions/(?P<version>[^/]+)/assets/?")
_API_BY_ID = re.compile(rf"(?P<api>.+?)(?:/dandisets/(?P<id>\d{{6}})/versions/(?P<version>[^/]+))?/assets/"
                        rf"(?P<asset_id>{_UUID})(?:/download)?/?")


@dataclass(frozen=True)
class RemoteAsset:
    """A remote NWB file: where its bytes are and, for a DANDI asset, which asset it is.

    Attributes
    ----------
    content_url : str
        URL the bytes are streamed from (S3, or the API's download redirect target; signed for embargoed data).
    path : str
        Asset path inside the dandiset (for a plain URL, the file name in the URL).
    dandiset_id, version, asset_id, api_url : str or None
        DANDI identity (None for a plain URL).
    """

    content_url: str
    path: str
    dandiset_id: str | None = None
    version: str | None = None
    asset_id: str | None = None
    api_url: str | None = None

    @property
    def is_zarr(self) -> bool:
        """Whether the asset is an NWB Zarr store (read with hdmf-zarr) rather than an HDF5 file."""
        return self.path.rstrip("/").endswith(".zarr") or "/zarr/" in urlsplit(self.content_url).path

    @property
    def label(self) -> str:
        """``DANDI:<id>/<version>/<path>`` for a DANDI asset, else the URL (for messages)."""
        if self.dandiset_id is None:
            return self.content_url
        return f"DANDI:{self.dandiset_id}/{self.version}/{self.path}"

    def dandi_fields(self) -> dict[str, str | None]:
        """The DANDI keywords of :class:`nwb_extract.io.source.SourceInfo`."""
        return {"dandiset_id": self.dandiset_id, "dandiset_version": self.version, "asset_id": self.asset_id,
                "asset_path": self.path if self.dandiset_id is not None else None}


@dataclass(frozen=True)
class _Target:
    """A parsed input: an API address plus dandiset, version and an asset path, prefix or id."""

    api_url: str
    dandiset_id: str | None
    version: str | None
    path: str | None = None
    asset_id: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# parsing and resolution


def is_dandi_input(text: str) -> bool:
    """Whether ``text`` is a DANDI address or an ``s3://`` URL (inputs this module resolves)."""
    return (text.startswith(("dandi://", "s3://")) or bool(_DANDI_ID.fullmatch(text))
            or (text.startswith(("http://", "https://")) and _parse_api_url(text) is not None))


def resolve_asset(text: str, *, path: str | None = None, client: Any = None) -> RemoteAsset:
    """Resolve any accepted input form to one :class:`RemoteAsset` (its content URL and DANDI identity).

    Parameters
    ----------
    text : str
        ``dandi://...``, ``DANDI:<id>[/<version>]``, a DANDI API asset URL, or a plain http(s)/s3 URL.
    path : str, optional
        Asset path inside the dandiset; required with ``DANDI:<id>``, not allowed with a URL that names one.
    client : dandi.dandiapi.DandiAPIClient, optional
        Client to use; by default one for the input's API address (see :data:`API_URL_ENV`), authenticated
        with ``DANDI_API_KEY`` when set.

    Raises
    ------
    SourceNotFoundError
        Unknown dandiset or version, or no asset at the path or id.
    AuthenticationRequiredError
        The server needs an API key (embargoed dandiset) and none or a wrong one was given.
    RemoteReadError
        The server could not be reached.
    InputError
        A malformed address, an unknown instance name, or a missing/extra ``path``.
    """
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://"):].partition("/")
        text = f"https://{bucket}.s3.amazonaws.com/{key}"
    target = _parse(text, path)
    if target is None:
        return RemoteAsset(content_url=text, path=unquote(urlsplit(text).path.rstrip("/").rsplit("/", 1)[-1]))
    if target.path is None and target.asset_id is None:
        raise InputError(f"{text} names a dandiset, not an asset: give the asset path (--path sub-X/file.nwb, or "
                         "dandi://<instance>/<dandiset>/<path>), or use `nwb-extract batch` for every asset")
    with _api_errors(text):
        client = client or _client(target.api_url)
        if target.asset_id is not None:
            if target.dandiset_id is None:
                asset = client.get_asset(target.asset_id)
                return _remote_asset(asset, target.api_url, None, None, token=client.session.headers)
            dandiset = client.get_dandiset(target.dandiset_id, target.version, lazy=True)
            asset = dandiset.get_asset(target.asset_id)
        else:
            dandiset = client.get_dandiset(target.dandiset_id, target.version, lazy=False)
            asset = dandiset.get_asset_by_path(target.path)
        return _remote_asset(asset, target.api_url, dandiset.identifier, dandiset.version_id,
                             token=client.session.headers)


def list_assets(text: str, *, include: str | None = None, client: Any = None) -> list[RemoteAsset]:
    """Every NWB asset (``.nwb``, ``.nwb.zarr``) of a dandiset or under a ``dandi://`` path prefix, by path.

    ``include`` is a glob on the asset path (``fnmatch``; ``*`` matches across ``/``), e.g. ``"sub-1*/*.nwb"``.
    Raises the errors of :func:`resolve_asset`.
    """
    target = _parse(text, None)
    if target is None or target.asset_id is not None:
        raise InputError(f"{text} is not a dandiset or a dandi:// path prefix; give e.g. DANDI:000123, "
                         "DANDI:000123/draft or dandi://dandi/000123@draft/sub-1/")
    with _api_errors(text):
        client = client or _client(target.api_url)
        dandiset = client.get_dandiset(target.dandiset_id, target.version, lazy=False)
        found = dandiset.get_assets_with_path_prefix(target.path) if target.path else dandiset.get_assets()
        chosen = sorted((a for a in found if a.path.endswith(_NWB_SUFFIXES)
                         and (include is None or fnmatch.fnmatch(a.path, include))), key=lambda a: a.path)
        return [_remote_asset(a, target.api_url, dandiset.identifier, dandiset.version_id,
                              token=client.session.headers) for a in chosen]


def derived_file_name(asset_path: str) -> str:
    """The DANDI-style relative path of the result of an asset (docs/dandi.md, "Derived file names").

    The folders are kept and ``desc-extract`` is inserted as the last entity, before the modality suffix:
    ``sub-01/sub-01_ses-2_ophys.nwb`` -> ``sub-01/sub-01_ses-2_desc-extract_ophys.nwb``; a name without a
    suffix gets it appended (``movie.nwb`` -> ``movie_desc-extract.nwb``). The result is always ``.nwb`` (HDF5).
    """
    folder, _, name = asset_path.strip("/").rpartition("/")
    stem = next((name[: -len(s)] for s in sorted(_NWB_SUFFIXES, key=len, reverse=True) if name.endswith(s)), name)
    head, _, suffix = stem.rpartition("_")
    if head and suffix and "-" not in suffix:
        stem = f"{head}_{DERIVED_ENTITY}_{suffix}"
    else:
        stem = f"{stem}_{DERIVED_ENTITY}"
    return f"{folder}/{stem}.nwb" if folder else f"{stem}.nwb"


def _parse(text: str, path: str | None) -> _Target | None:
    """The DANDI target of ``text`` (``path`` from ``--path``), or None for a plain URL."""
    uri = _DANDI_URI.fullmatch(text)
    if uri:
        _no_extra_path(text, path, uri["path"])
        return _Target(_instance_api(uri["instance"]), uri["id"], uri["version"], uri["path"] or path)
    short = _DANDI_ID.fullmatch(text)
    if short:
        return _Target(_instance_api("dandi"), short["id"], short["version"], path)
    if text.startswith("dandi://") or text.lower().startswith("dandi:"):
        raise InputError(f"cannot parse {text!r}: use dandi://<instance>/<6-digit id>[@<version>]/<path> or "
                         "DANDI:<6-digit id>[/<version>]")
    target = _parse_api_url(text)
    if target is not None:
        _no_extra_path(text, path, target.path or target.asset_id)
        return target if target.path or target.asset_id or path is None else _Target(**{**target.__dict__,
                                                                                           "path": path})
    if path is not None:
        raise InputError(f"--path is for DANDI:<dandiset> inputs; {text} is a plain URL of one file")
    return None


def _parse_api_url(url: str) -> _Target | None:
    split = urlsplit(url)
    base = f"{split.scheme}://{split.netloc}{split.path}"
    by_id = _API_BY_ID.fullmatch(base)
    if by_id:
        return _Target(_env_api(by_id["api"]), by_id["id"], by_id["version"], asset_id=by_id["asset_id"])
    by_path = _API_BY_PATH.fullmatch(base)
    if by_path:
        prefix = parse_qs(split.query).get("path", [None])[0]
        return _Target(_env_api(by_path["api"]), by_path["id"], by_path["version"], prefix)
    return None


def _no_extra_path(text: str, path: str | None, named: str | None) -> None:
    if path is not None and named:
        raise InputError(f"{text} already names an asset; leave out --path")


def _instance_api(name: str) -> str:
    from dandi.consts import known_instances

    if name not in known_instances:
        raise InputError(f"unknown DANDI instance {name!r}; known: {', '.join(sorted(known_instances))}")
    return _env_api(known_instances[name].api)


def _env_api(api_url: str) -> str:
    return os.environ.get(API_URL_ENV) or api_url.rstrip("/")


def _client(api_url: str) -> Any:
    """A DandiAPIClient for ``api_url`` (no request made), with ``DANDI_API_KEY`` as token when set."""
    from dandi.consts import DandiInstance, known_instances
    from dandi.dandiapi import DandiAPIClient

    instance = next((i for i in known_instances.values() if i.api.rstrip("/") == api_url),
                    DandiInstance(name="nwb-extract-custom", gui=None, api=api_url))
    return DandiAPIClient(dandi_instance=instance, token=os.environ.get("DANDI_API_KEY") or None)


def _remote_asset(asset: Any, api_url: str, dandiset_id: str | None, version: str | None, *,
                  token: Any) -> RemoteAsset:
    return RemoteAsset(content_url=_content_url(asset, authenticated="Authorization" in token), path=asset.path,
                       dandiset_id=dandiset_id, version=version, asset_id=asset.identifier, api_url=api_url)


def _content_url(asset: Any, *, authenticated: bool) -> str:
    """The S3 URL from the metadata (no request) for public data; else the API download URL's redirect target.

    An authenticated client follows the API's download redirect, which signs the URL for embargoed data; the
    query is kept (it carries the signature).
    """
    from dandi.exceptions import NotFoundError

    if not authenticated:
        try:
            return asset.get_content_url(regex=r"amazonaws\.com", strip_query=False)
        except NotFoundError:
            pass
    return asset.get_content_url(regex=r"/download/?$", follow_redirects=1, strip_query=False)


@contextmanager
def _api_errors(text: str) -> Iterator[None]:
    """Turn dandi-client and HTTP errors into package errors that say what to do."""
    import requests
    from dandi.exceptions import NotFoundError

    try:
        yield
    except NotFoundError as err:
        raise SourceNotFoundError(f"{text}: {err}") from None
    except requests.HTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise AuthenticationRequiredError(
                f"{text}: the DANDI server refused access (HTTP {status}); the dandiset may be embargoed: set "
                "the environment variable DANDI_API_KEY to your API key (dandiarchive.org, 'API key' in your "
                "account menu)") from None
        if status == 404:
            raise SourceNotFoundError(f"{text}: not found on the DANDI server ({err})") from None
        raise RemoteReadError(f"{text}: the DANDI server answered HTTP {status} ({err})") from None
    except requests.RequestException as err:
        raise RemoteReadError(f"{text}: cannot reach the DANDI server ({type(err).__name__}: {err}); check the "
                              "network and retry") from None


# ----------------------------------------------------------------------------------------------------------------
# streaming


@contextmanager
def open_asset(asset: RemoteAsset, series: str | None = None, *,
               frames: tuple[int | None, int | None] | None = None,
               cache_dir: str | os.PathLike | None = None) -> Iterator[Any]:
    """Open an imaging series of a remote asset for streamed, block-wise reading (a context manager).

    Yields the :class:`nwb_extract.io.movie.ImagingSource` of :func:`nwb_extract.io.movie.open_series`
    (``series`` and ``frames`` as there). HDF5 assets are read through remfile (``cache_dir``: keep the fetched
    chunks on disk, so a re-run reads them locally); Zarr assets through hdmf-zarr.

    Raises
    ------
    RemoteReadError
        The file could not be reached, or a read failed after remfile's retries (also inside the ``with``
        block, e.g. while the engine reads frames).
    SourceNotFoundError, AuthenticationRequiredError
        The content URL answers 404/410, or 401/403.
    NoImagingSeriesError, SeriesNotFoundError, AmbiguousSeriesError, UnsupportedSeriesError, InputError
        As :func:`nwb_extract.io.movie.open_series`.
    """
    from nwb_extract.io.movie import open_series

    with ExitStack() as stack:
        if asset.is_zarr:
            nwbfile = _open_zarr(asset, stack)
            streamed = None
        else:
            streamed = _open_streamed(asset, cache_dir)
            stack.callback(streamed.close)
            nwbfile = _h5_file(streamed, asset, stack)
        with network_errors(streamed, asset.label), open_series(nwbfile, series, frames=frames) as source:
            source.location = asset.content_url
            yield source


def _open_streamed(asset: RemoteAsset, cache_dir: str | os.PathLike | None) -> RemoteFile:
    try:
        return RemoteFile(asset.content_url, cache_dir)
    except Exception as err:  # an HTTPStatusError, or the connection error of the last try
        code = getattr(err, "status", None)
        if code in (404, 410):
            raise SourceNotFoundError(f"{asset.label}: no file at {asset.content_url} ({err})") from None
        if code in (401, 403):
            raise AuthenticationRequiredError(f"{asset.label}: access refused (HTTP {code}); for embargoed data "
                                              "set DANDI_API_KEY") from None
        raise RemoteReadError(f"cannot read {asset.label} from {asset.content_url}: {err}") from None


def _h5_file(streamed: RemoteFile, asset: RemoteAsset, stack: ExitStack) -> Any:
    import h5py

    from nwb_extract.errors import NotNwbError

    try:
        return stack.enter_context(h5py.File(streamed, "r"))
    except Exception as err:  # h5py passes a read error of the file object through, or makes an OSError of it
        if streamed.error is not None:
            raise RemoteReadError(f"reading {asset.label} failed after retries: {streamed.error}") from None
        raise NotNwbError(f"{asset.label} is not an NWB HDF5 file ({err})") from None


def _open_zarr(asset: RemoteAsset, stack: ExitStack) -> Any:
    from hdmf_zarr import NWBZarrIO

    from nwb_extract.errors import NotNwbError

    try:
        io = NWBZarrIO(asset.content_url, mode="r")
        stack.callback(io.close)
        return io.read()
    except Exception as err:  # hdmf-zarr / fsspec raise many types
        raise NotNwbError(f"{asset.label} could not be read as an NWB Zarr store: {type(err).__name__}: {err}") \
            from None


# ----------------------------------------------------------------------------------------------------------------
# batch manifest (the batch itself: nwb_extract.workflow.run_batch)


@dataclass
class BatchEntry:
    """One asset's line in the batch manifest (:data:`MANIFEST_NAME`).

    ``status`` is ``"done"`` (``output`` written, ``n_cells`` found), ``"failed"`` (``error``: the message; retried
    by the next run) or ``"skipped"`` (``error``: why, e.g. no imaging series; not retried).
    """

    path: str
    status: str
    asset_id: str | None = None
    output: str | None = None
    n_cells: int | None = None
    error: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def load_manifest(path: Path) -> dict[str, BatchEntry]:
    """The entries of a batch manifest by asset path (``{}`` when there is none yet)."""
    if not path.exists():
        return {}
    try:
        assets = json.loads(path.read_text())["assets"]
        return {p: BatchEntry(path=p, **{k: v for k, v in e.items() if k != "path"}) for p, e in assets.items()}
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"the batch manifest {path} is not readable ({err}); move it away to start afresh") \
            from None


def save_manifest(path: Path, source: str, manifest: dict[str, BatchEntry]) -> None:
    """Write the manifest of a batch over ``source`` atomically."""
    document = {"source": source, "assets": {p: e.to_dict() for p, e in sorted(manifest.items())}}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1) + "\n")

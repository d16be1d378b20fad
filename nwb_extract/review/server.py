"""The review server of ``nwb-extract review``: a local web page over one run of a result file.

:func:`open_review` checks the input and the save target, opens the run (:class:`~nwb_extract.review.data.
ReviewData`) and binds a :class:`ReviewServer` to 127.0.0.1 (a free port unless one is given). Every request must
carry the random token of the URL (query ``token=`` or header ``X-Review-Token``) and name the server's own host;
others get 403. The server uses the standard library's threaded HTTP server (docs/decisions.md): one local user,
a handful of requests per second, and no dependency to install.

Routes: ``/`` the page; ``/static/<file>`` its script and style (package data, nothing fetched from elsewhere);
``/api/overview`` (run, images, metrics, contours, stored review), ``/api/cell?i=&elim=`` (footprint crop and
metrics), ``/api/trace?i=&t0=&t1=&bins=&elim=`` (min/max per pixel column), ``POST /api/prefetch`` (read the next
cells' traces ahead), ``POST /api/save`` (write the review: into the NWB file, or the ``--export`` JSON file).
"""

from __future__ import annotations

import errno
import http.server
import importlib.resources
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nwb_extract.errors import InputError, NwbExtractError, OutputNotWritableError, SourceNotFoundError
from nwb_extract.io.curation import current_user, export_curation, import_curation, now_text, write_curation
from nwb_extract.result import Curation
from nwb_extract.review.data import ReviewData

__all__ = ["ReviewServer", "is_read_only", "open_review"]

log = logging.getLogger("nwb_extract.review")

_STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
_TOKEN_PLACEHOLDER = "{{TOKEN}}"


def is_read_only(source: str) -> bool:
    """Whether a review of ``source`` cannot be written back into it: a URL, an NWB Zarr folder, or a local file
    (or folder) this process may not write."""
    if source.startswith(("http://", "https://")):
        return True
    path = Path(source)
    return path.is_dir() or not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def open_review(source: str, run: str | None = None, *, port: int = 0, export: str | os.PathLike | None = None,
                import_from: str | os.PathLike | None = None, curator: str | None = None,
                label: str | None = None) -> ReviewServer:
    """Open one run of a result file for review and bind the server (not yet serving: call ``serve_forever``).

    Parameters
    ----------
    source : str
        Local NWB file (HDF5) or http(s) URL of one (streamed; a DANDI asset's content URL).
    run : str, optional
        Run name; the first run by default.
    port : int
        Port on 127.0.0.1; 0 picks a free one.
    export : path, optional
        Save the review as JSON here instead of into the file (required when the file is read-only).
    import_from : path, optional
        Start from the review in this JSON file (written by ``--export``) instead of the one stored in the file.
    curator : str, optional
        Who is reviewing (recorded on save); the login name by default.
    label : str, optional
        How the page names the file (e.g. a DANDI asset address).

    Raises
    ------
    SourceNotFoundError, NotNwbError, InputError
        No such file, not NWB, no nwb-extract run or no run of that name, a bad import file, a port in use.
    OutputNotWritableError
        A read-only input without ``export``, or an ``export`` folder that does not exist.
    """
    if not source.startswith(("http://", "https://")) and not Path(source).exists():
        raise SourceNotFoundError(f"no such file: {source}")
    if export is None and is_read_only(source):
        raise OutputNotWritableError(f"{label or source} is read-only here (a streamed URL, a Zarr folder or a file "
                                     "without write permission), so the review cannot be saved into it; give "
                                     "--export curation.json to save it to a JSON file")
    if export is not None:
        export = Path(export)
        if export.is_dir() or not export.parent.is_dir() or not os.access(export.parent, os.W_OK):
            raise OutputNotWritableError(f"cannot write the review to {export}: give a file in an existing, "
                                         "writable folder")
    data = ReviewData(source, run, label=label)
    try:
        if import_from is not None:
            data.curation = import_curation(import_from, run=data.run_name, n_cells=data.n_cells)
        if export is None:
            def save(curation: Curation) -> str:
                write_curation(source, curation, data.run_name)
                return f"{source} (run {data.run_name})"
        else:
            def save(curation: Curation) -> str:
                return str(export_curation(export, curation, source=data.label, run=data.run_name))
        return ReviewServer(data, save, port=port, curator=curator or current_user(),
                            target=str(export) if export is not None else "the NWB file")
    except BaseException:
        data.close()
        raise


class ReviewServer(http.server.ThreadingHTTPServer):
    """The HTTP server of one review (bound on creation; ``serve_forever`` serves, ``shutdown`` stops).

    Attributes
    ----------
    url : str
        The page's address, token included.
    data : ReviewData
        The run shown.
    """

    daemon_threads = True

    def __init__(self, data: ReviewData, save: Callable[[Curation], str], *, port: int, curator: str,
                 target: str) -> None:
        self.data = data
        self.token = secrets.token_urlsafe(24)
        self.curator = curator
        self.target = target
        self._save = save
        self._save_lock = threading.Lock()
        if not 0 <= port <= 65535:
            raise InputError(f"--port {port} is not a port number; give 1-65535, or leave --port out for a free one")
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on 127.0.0.1 is in use; choose another with --port, or leave --port "
                                 "out to use a free one") from None
            raise InputError(f"cannot listen on 127.0.0.1 port {port}: {err.strerror}") from None
        self.port = int(self.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/?token={self.token}"

    def server_close(self) -> None:
        """Stop listening and close the file."""
        super().server_close()
        self.data.close()

    def save(self, accepted: list[int], rejected: list[int]) -> dict[str, Any]:
        """Write the page's review (cell indices) where this server saves; returns where, who and when."""
        with self._save_lock:
            curation = self.data.curation_with(accepted, rejected, self.curator, now_text())
            where = self._save(curation)
            self.data.curation = curation
        log.info("saved the review of %d cells to %s", curation.accepted.size, where)
        return {"saved_to": where, "curated_by": curation.curated_by, "curated_at": curation.curated_at,
                "accepted": int(curation.accepted.sum()), "rejected": int(curation.rejected.sum())}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)

    # -- checks

    def _allowed(self, query: dict[str, list[str]]) -> bool:
        host = (self.headers.get("Host") or "").lower()
        if host not in (f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}"):
            return False
        token = self.headers.get("X-Review-Token") or (query.get("token") or [""])[0]
        return secrets.compare_digest(token.encode(), self.server.token.encode())

    # -- responses

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value, separators=(",", ":"), allow_nan=False).encode(),
                   "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if not self._allowed(query):
            self._error(403, "forbidden: open the page with the address nwb-extract review printed (its token)")
            return
        try:
            route = _ROUTES.get((method, parts.path))
            if route is None and method == "GET" and parts.path.startswith("/static/"):
                route = _static
            if route is None:
                self._error(404, f"no such page: {parts.path}")
                return
            route(self, query)
        except NwbExtractError as err:
            self._error(400, str(err))
        except (ValueError, KeyError) as err:
            self._error(400, f"bad request: {err}")
        except Exception as err:  # keep serving; the page shows the message
            log.exception("review server error on %s", self.path)
            self._error(500, f"{type(err).__name__}: {err}")

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")


def _asset(name: str) -> bytes:
    return (importlib.resources.files("nwb_extract.review") / "static" / name).read_bytes()


def _index(handler: _Handler, query: dict) -> None:
    page = _asset("index.html").decode().replace(_TOKEN_PLACEHOLDER, handler.server.token)
    handler._send(200, page.encode(), "text/html; charset=utf-8")


def _static(handler: _Handler, query: dict) -> None:
    name = urlsplit(handler.path).path.removeprefix("/static/")
    if name not in _STATIC:
        handler._error(404, f"no such file: {name}")
        return
    handler._send(200, _asset(name), _STATIC[name])


def _overview(handler: _Handler, query: dict) -> None:
    server = handler.server
    handler._json({**server.data.overview(), "curator": server.curator, "save_target": server.target})


def _flag(query: dict, name: str) -> bool:
    return (query.get(name) or ["0"])[0] in ("1", "true")


def _number(query: dict, name: str, kind: type = float) -> Any:
    values = query.get(name)
    return None if not values or values[0] == "" else kind(values[0])


def _cell(handler: _Handler, query: dict) -> None:
    handler._json(handler.server.data.cell(_number(query, "i", int), eliminated=_flag(query, "elim")))


def _trace(handler: _Handler, query: dict) -> None:
    handler._json(handler.server.data.trace(_number(query, "i", int), start=_number(query, "t0"),
                                            stop=_number(query, "t1"), bins=_number(query, "bins", int) or 1000,
                                            eliminated=_flag(query, "elim")))


def _prefetch(handler: _Handler, query: dict) -> None:
    cells = [int(i) for i in handler.read_json().get("cells", [])][:8]
    threading.Thread(target=handler.server.data.prefetch, args=(cells,), daemon=True).start()
    handler._json({"ok": True})


def _save(handler: _Handler, query: dict) -> None:
    body = handler.read_json()
    handler._json(handler.server.save(list(body.get("accepted", [])), list(body.get("rejected", []))))


_ROUTES: dict[tuple[str, str], Callable[[_Handler, dict], None]] = {
    ("GET", "/"): _index,
    ("GET", "/api/overview"): _overview,
    ("GET", "/api/cell"): _cell,
    ("GET", "/api/trace"): _trace,
    ("POST", "/api/prefetch"): _prefetch,
    ("POST", "/api/save"): _save,
}

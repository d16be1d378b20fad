"""``nwb-extract review``: resolve the input, open the review server, print its address, serve until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import webbrowser

from nwb_extract.review.server import open_review

__all__ = ["run_review"]


def run_review(args: argparse.Namespace) -> int:
    """Run the ``review`` command (arguments of :func:`nwb_extract.cli.build_parser`); returns the exit code."""
    from nwb_extract.io.dandi import RemoteAsset
    from nwb_extract.workflow import resolve_input

    resolved, _ = resolve_input(args.result, path=args.path)
    source, label = ((resolved.content_url, resolved.label) if isinstance(resolved, RemoteAsset)
                     else (str(resolved), None))
    server = open_review(source, args.run, port=args.port, export=args.export, import_from=args.import_from,
                         curator=args.curator, label=label)
    data = server.data
    print(f"reviewing run {data.run_name} of {label or source}: {data.n_cells} cells; saving to "
          f"{server.target}", flush=True)
    print(f"open {server.url}", flush=True)
    print("press Ctrl-C to stop the server (save in the page first)", flush=True)
    if not args.no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("review server stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0

"""``nwb-extract review``: a local web page to look at every cell of a result and accept or reject it.

:mod:`~nwb_extract.review.server` (the server and its checks), :mod:`~nwb_extract.review.data` (what the page shows
of one run), :mod:`~nwb_extract.review.cli` (the command), ``static/`` (the page: HTML, plain JavaScript, CSS). The
review's NWB and JSON forms are :mod:`nwb_extract.io.curation`.
"""

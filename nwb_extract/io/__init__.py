"""File and archive I/O of nwb_extract: NWB reading and writing, lazy movie sources, DANDI streaming."""

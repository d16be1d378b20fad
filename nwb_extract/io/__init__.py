"""File and archive I/O of nwb_extract, reading and writing only (never the engine): NWB files and series, lazy
movie sources, results, our extension, atomic writes, DANDI assets (docs/architecture.md has one line per module)."""

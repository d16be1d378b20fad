"""nwb_extract."""

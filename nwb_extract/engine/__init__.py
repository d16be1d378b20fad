"""The EXTRACT algorithm: pure array code (Array API), no file I/O, no NWB."""

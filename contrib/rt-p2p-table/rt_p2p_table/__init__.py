"""rt-p2p-table: GPU peer access from a table of known systems (see README.md)."""

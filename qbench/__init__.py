"""qbench."""

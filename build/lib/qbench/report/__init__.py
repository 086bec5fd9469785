"""Tables and plots from stored cells (pure functions of a results folder): see tables.py, plots.py."""

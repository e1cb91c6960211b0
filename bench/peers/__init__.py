"""The peers' task modules: the same no-op, marker and add tasks, one module per library."""

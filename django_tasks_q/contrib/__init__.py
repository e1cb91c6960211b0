"""Optional helpers that are not part of the task runtime: import them explicitly (``contrib.rdb``)."""

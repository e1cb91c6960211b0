"""Periodic tasks: pure schedule arithmetic, the database scheduler and its leader lock."""

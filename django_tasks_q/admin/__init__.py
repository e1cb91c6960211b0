"""Admin registrations, one module per model family."""

from . import dashboard, results, routing, schedules, workers  # noqa: F401  importing them registers the admins

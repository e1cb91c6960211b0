"""Admin registrations, one module per model family."""

from . import results  # noqa: F401

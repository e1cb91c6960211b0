"""What ``taskworker`` prints as it starts: where it connects, what it consumes, the tasks it knows."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .. import __version__
from ..broker.connection import mask_url
from ..conf import settings
from ..core.registry import registry

if TYPE_CHECKING:
    from .worker import Worker


def banner(worker: Worker) -> str:
    """The start-up banner of ``worker``; URLs masked (masking.py)."""
    tasks = "\n".join(f"    . {name}" for name in registry.names()) or "    (none)"
    return (
        f"\n -------------- {worker.hostname} v{__version__}\n"
        f" broker:      {mask_url(settings.BROKER_URL)}\n"
        f" results:     {mask_url(str(settings.RESULT_BACKEND))}\n"
        f" queues:      {', '.join(worker.queue_names)}\n"
        f" pool:        {worker.pool.name} (concurrency {worker.pool.concurrency}, prefetch {worker.prefetch})\n"
        f" pid:         {os.getpid()}\n"
        f" tasks:\n{tasks}\n"
    )

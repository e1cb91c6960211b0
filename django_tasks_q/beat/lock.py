"""The leader lease: of several ``taskbeat`` processes, one sends.

The lease is a ``BeatLease`` row taken and renewed with one conditional
UPDATE (free, expired, or already ours). A leader that dies stops renewing
and another beat takes over once ``ttl`` passes. The lease saves work; the
exactly-once guarantee itself comes from the per-run compare-and-set in
:mod:`.entries`, which holds even if two beats overlap for a moment.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from django.db.models import Q

from ..models import BeatLease


class Lease:
    def __init__(self, name: str = "beat", ttl: float = 6.0):
        self.name = name
        self.ttl = timedelta(seconds=ttl)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        BeatLease.objects.get_or_create(name=name)

    def acquire(self, now: datetime) -> bool:
        """Take or renew the lease; True while we hold it."""
        free_or_ours = Q(holder=self.holder) | Q(expires_at__isnull=True) | Q(expires_at__lt=now)
        taken = BeatLease.objects.filter(free_or_ours, name=self.name).update(
            holder=self.holder, expires_at=now + self.ttl)
        return taken == 1

    def release(self) -> None:
        BeatLease.objects.filter(name=self.name, holder=self.holder).update(holder="", expires_at=None)

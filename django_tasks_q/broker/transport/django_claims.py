"""How a ``django://`` consumer takes messages: claims in batches, acks as one statement each.

A claim reserves rows for a consumer by setting ``reserved_until`` (and
counting the delivery). Claiming one row per delivery cost a transaction
of three statements per task -- most of a worker's time on PostgreSQL -- so
a claim takes as many rows as the consumer's prefetch window has room for
(at most :data:`CLAIM_MAX`), and the channel hands them out one by one:

* PostgreSQL and SQLite (3.35 or later) claim with one statement,
  ``UPDATE ... WHERE id IN (SELECT ... LIMIT k [FOR UPDATE SKIP LOCKED])
  RETURNING ...``. On PostgreSQL the row locks skip rows other consumers are
  claiming; SQLite has one writer at a time, so the statement is atomic there
  without them. On PostgreSQL the statement is the body of the function
  ``django_tasks_q_claim`` (migration 0001_initial), planned with sorting disabled: a
  table without fresh statistics (a large fill or release before autovacuum
  analyzed it) otherwise gets a plan that sorts every ready row on each claim.
* Other databases with ``SELECT ... FOR UPDATE SKIP LOCKED`` (MySQL 8,
  MariaDB 10.6, Oracle) lock the rows in a transaction, then update them
  through the ORM.

Rows claimed but not yet delivered stay reserved for this channel: the
keeper extends them with the delivered ones, and when the last consumer of
their queue is cancelled (or the channel closes) they are given back with
their delivery count as it was, so they are not marked redelivered. Because
a claim never takes more than the prefetch window has room for, a consumer
never holds more messages than its prefetch count allows. A process that dies
holding claimed rows loses them to the next consumer once their deadline
passes, as it does its delivered ones.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from datetime import datetime, timedelta
from functools import cached_property
from queue import Empty
from typing import TYPE_CHECKING, Any, Callable

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from ...core.protocol import fast_loads

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from ...models import BrokerMessage

logger = logging.getLogger(__name__)

#: Most messages one claim takes (fewer when the prefetch window has less room).
CLAIM_MAX = 16
#: A claimed row: its payload, how many times it was claimed before, its delivery tag.
Claimed = tuple[str, int, str]
#: The first SQLite that has ``UPDATE ... RETURNING``.
SQLITE_RETURNING = (3, 35, 0)


def unclaimed(now: datetime) -> Q:
    """Rows no consumer holds: never claimed, released, or the claim expired."""
    return Q(reserved_until__isnull=True) | Q(reserved_until__lt=now)


def as_delivered(payload: str, delivery_count: int) -> dict[str, Any]:
    """The kombu message in a claimed row; one claimed before (its consumer died, rejected or restored it)
    is marked redelivered."""
    message = fast_loads(payload)
    if delivery_count:
        message["redelivered"] = True
        message["properties"].setdefault("delivery_info", {})["redelivered"] = True
        if isinstance(message.get("headers"), dict):
            message["headers"]["redelivered"] = True
    return message


class ClaimsMixin:
    """For the ``django://`` channel: ``_get`` from batches of claimed rows, ``_delete_message`` in one statement."""

    database: str
    visibility_timeout: float
    model: type[BrokerMessage]
    qos: Any
    _consumers: set[str]
    _active_queues: list[str]
    _retrying: Callable[..., Any]

    if TYPE_CHECKING:
        @property
        def _rows(self) -> QuerySet[BrokerMessage]: ...

    def _init_claims(self) -> None:
        self._claimed: dict[str, deque[Claimed]] = {}  # queue -> rows claimed, not yet delivered
        connection = connections[self.database]
        sqlite_returning = connection.vendor == "sqlite" and sqlite3.sqlite_version_info >= SQLITE_RETURNING
        if connection.vendor == "postgresql" or sqlite_returning:
            self._claim_rows: Callable[[str, datetime, datetime, int], list[Claimed]] = self._claim_returning
        elif connection.features.has_select_for_update_skip_locked:
            self._claim_rows = self._claim_locked
        else:
            found = connection.display_name
            if connection.vendor == "sqlite":
                found += " " + ".".join(map(str, sqlite3.sqlite_version_info))
            raise ImproperlyConfigured(
                f"the django:// broker needs PostgreSQL, SQLite {'.'.join(map(str, SQLITE_RETURNING))} or later, "
                f"or a database with SELECT ... FOR UPDATE SKIP LOCKED; database {self.database!r} is {found}")

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """The next message this channel claimed from ``queue``, claiming a batch when none is left; else ``Empty``."""
        claimed = self._claimed.get(queue)
        if not claimed:
            now = timezone.now()
            rows = self._claim_rows(queue, now, now + timedelta(seconds=self.visibility_timeout), self._claim_size())
            if not rows:
                raise Empty()
            claimed = self._claimed[queue] = deque(rows)
        payload, count, _ = claimed.popleft()
        return as_delivered(payload, count)  # decoded one by one: a row that is not JSON stops only itself

    def _claim_size(self) -> int:
        """What the prefetch window has room for, at most ``CLAIM_MAX``; a plain ``basic_get`` takes one."""
        if not self._consumers:
            return 1
        room = self.qos.can_consume_max_estimate()
        return CLAIM_MAX if room is None else max(1, min(CLAIM_MAX, room))

    @cached_property
    def _table(self) -> str:
        return connections[self.database].ops.quote_name(self.model._meta.db_table)

    @cached_property
    def _claim_sql(self) -> str:
        """The claim statement, with named parameters: queue, now, deadline, size."""
        if connections[self.database].vendor == "postgresql":
            # the same UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING, in a function planned without sorts
            # (migration 0001_initial): without fresh statistics the planner would sort every ready row per claim
            return ("SELECT id, priority, payload, delivery_count, delivery_tag"
                    " FROM django_tasks_q_claim(%(queue)s, %(now)s, %(deadline)s, %(size)s)")
        return (f"UPDATE {self._table} SET reserved_until = %(deadline)s, delivery_count = delivery_count + 1"
                f" WHERE id IN (SELECT id FROM {self._table} WHERE queue = %(queue)s AND visible_at IS NULL"
                f" AND (reserved_until IS NULL OR reserved_until < %(now)s) ORDER BY priority DESC, id"
                # the updated rows
                f" LIMIT %(size)s) RETURNING id, priority, payload, delivery_count - 1, delivery_tag")

    def _claim_returning(self, queue: str, now: datetime, deadline: datetime, size: int) -> list[Claimed]:
        """One statement claims the first ``size`` deliverable rows (the order of RETURNING is the database's)."""
        connection = connections[self.database]
        adapt = connection.ops.adapt_datetimefield_value
        params = {"queue": queue, "now": adapt(now), "deadline": adapt(deadline), "size": size}
        with connection.cursor() as cursor:
            cursor.execute(self._claim_sql, params)
            rows = cursor.fetchall()
        rows.sort(key=lambda row: (-row[1], row[0]))
        return [(payload, count, tag) for _, _, payload, count, tag in rows]

    def _claim_locked(self, queue: str, now: datetime, deadline: datetime, size: int) -> list[Claimed]:
        """Lock the first ``size`` deliverable rows, skipping rows other consumers are claiming, then claim them."""
        ready = (self._rows.filter(unclaimed(now), visible_at__isnull=True, queue=queue)
                 .order_by("-priority", "id").only("id", "payload", "delivery_count", "delivery_tag"))
        with transaction.atomic(using=self.database):
            rows = list(ready.select_for_update(skip_locked=True)[:size])
            if rows:
                self._rows.filter(pk__in=[row.pk for row in rows]).update(
                    reserved_until=deadline, delivery_count=F("delivery_count") + 1)
        return [(row.payload, row.delivery_count, row.delivery_tag) for row in rows]

    def _release_claimed(self, queue: str) -> None:
        """Give back what this channel claimed from ``queue`` but never delivered, as if never claimed."""
        claimed = self._claimed.pop(queue, None)
        if not claimed:
            return
        tags = [tag for _, _, tag in claimed]
        try:
            self._retrying(self._rows.filter(delivery_tag__in=tags, delivery_count__gt=0).update,
                           reserved_until=None, delivery_count=F("delivery_count") - 1)
        except DatabaseError as exc:
            logger.warning("django:// could not give back %d claimed message(s) of %r (%s); they return when "
                           "their claims expire", len(tags), queue, exc)

    def _release_if_unconsumed(self, queue: str | None) -> None:
        """After a consumer was cancelled: with no consumer left on ``queue``, nobody delivers its claimed rows."""
        if queue is not None and queue not in self._active_queues:
            self._release_claimed(queue)

    def _claimed_tags(self) -> list[str]:
        """Tags of the messages claimed and not yet delivered (read from the keeper thread: copies only)."""
        return [tag for claimed in list(self._claimed.values()) for _, _, tag in list(claimed)]

    def _delete_message(self, delivery_tag: str) -> None:
        """One statement per ack, written by hand: the ORM's ``delete()`` spends ~0.3 ms building the query
        and a deletion collector, three times what the statement costs."""
        with connections[self.database].cursor() as cursor:
            cursor.execute(self._delete_sql, [delivery_tag])

    @cached_property
    def _delete_sql(self) -> str:
        return f"DELETE FROM {self._table} WHERE delivery_tag = %s"

"""``BrokerMessage``: one row per queued message of the ``django://`` transport.

The transport (:mod:`django_tasks_q.broker.transport.django`) inserts a row
on publish, claims it by setting ``reserved_until`` and deletes it on ack.
"""

from __future__ import annotations

from django.db import models


class BrokerMessage(models.Model):
    """A message waiting in, or claimed from, a ``django://`` queue.

    ``payload`` is the whole kombu message (body, headers, properties) as the
    channel serialised it with kombu's JSON encoder. It is deliberately an
    opaque ``TextField`` rather than a ``JSONField``: the database never looks
    inside it (everything the queries need -- queue, priority, delivery tag,
    deadlines -- is a real column), kombu's encoding carries its own type
    markers for datetimes and bytes that must round-trip unchanged, and a
    ``jsonb`` column would re-encode and re-parse every message on PostgreSQL
    while behaving differently on each backend.

    Lifecycle: ``reserved_until`` is null while the message waits; a consumer
    claims it by setting a deadline, extends the deadline while it holds the
    message, and deletes the row on ack. A claim whose deadline has passed
    (the consumer died) makes the message deliverable again.
    """

    id = models.BigAutoField(primary_key=True)  # FIFO order within a priority
    queue = models.CharField(max_length=200)
    payload = models.TextField(help_text="the kombu message, JSON-encoded by the channel")
    priority = models.PositiveSmallIntegerField(default=0, help_text="higher is delivered first (AMQP)")
    delivery_tag = models.CharField(max_length=64, db_index=True)
    visible_at = models.DateTimeField(
        null=True, blank=True, help_text="not deliverable before this time (reserved for delayed delivery)"
    )
    reserved_until = models.DateTimeField(
        null=True, blank=True, help_text="deadline of the current claim; null while waiting"
    )
    delivery_count = models.PositiveIntegerField(
        default=0, help_text="how many times a consumer claimed it; above 0 means redelivered"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "django_tasks_q"
        db_table = "django_tasks_q_brokermessage"
        verbose_name = "broker message"
        indexes = [
            # The claim query: WHERE queue = %s ... ORDER BY priority DESC, id.
            models.Index(fields=["queue", "-priority", "id"], name="tasks_q_message_claim"),
            # Size/purge and finding expired claims.
            models.Index(fields=["queue", "reserved_until"], name="tasks_q_message_reserved"),
        ]

    def __str__(self) -> str:
        return f"{self.queue} #{self.id} (priority {self.priority})"

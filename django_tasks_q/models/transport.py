"""The ``django://`` transport's tables.

``BrokerMessage``: one row per queued message. The transport
(:mod:`django_tasks_q.broker.transport.django`) inserts a row on publish,
claims it by setting ``reserved_until`` and deletes it on ack.

``BrokerBinding``: one row per queue binding, so that every process routes
by the bindings any process declared (:mod:`~django_tasks_q.broker.transport.django_bindings`).
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
        null=True, blank=True, help_text="parked (delayed delivery) until this time; null: deliverable"
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
            # The claim query: WHERE queue = %s AND visible_at IS NULL ... ORDER BY priority DESC, id.
            # Parked (delayed) rows are outside this index, so a million of them cost a claim nothing.
            models.Index(fields=["queue", "-priority", "id"], name="tasks_q_message_ready",
                         condition=models.Q(visible_at__isnull=True)),
            # Releasing parked rows whose time has come: WHERE visible_at <= now.
            models.Index(fields=["visible_at"], name="tasks_q_message_parked",
                         condition=models.Q(visible_at__isnull=False)),
            # Size/purge and finding expired claims.
            models.Index(fields=["queue", "reserved_until"], name="tasks_q_message_reserved"),
        ]

    def __str__(self) -> str:
        return f"{self.queue} #{self.id} (priority {self.priority})"


class BrokerBinding(models.Model):
    """Queue ``queue`` is bound to ``exchange`` with binding key ``routing_key``.

    Written by a channel's ``queue_bind`` and read on publish by every
    process, so a worker's bindings route a web process's messages. An
    exchange has one type; it is stored on each of its bindings (an exchange
    without bindings routes nothing, so it needs no row of its own) and a
    declaration of another type is refused.
    """

    class ExchangeType(models.TextChoices):
        DIRECT = "direct"
        TOPIC = "topic"
        FANOUT = "fanout"

    exchange = models.CharField(max_length=200)
    exchange_type = models.CharField(max_length=10, choices=ExchangeType.choices)
    routing_key = models.CharField(
        max_length=255, blank=True, help_text="the binding key; topic: words with * (one) and # (zero or more)"
    )
    queue = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "django_tasks_q"
        db_table = "django_tasks_q_brokerbinding"
        verbose_name = "broker binding"
        constraints = [
            # Its index, exchange first, also serves the publish lookup (WHERE exchange = %s).
            models.UniqueConstraint(fields=["exchange", "routing_key", "queue"], name="tasks_q_binding_unique"),
        ]
        indexes = [
            # queue_delete and the existence check of a queue.
            models.Index(fields=["queue"], name="tasks_q_binding_queue"),
        ]

    def __str__(self) -> str:
        return f"{self.exchange} ({self.exchange_type}) --{self.routing_key!r}--> {self.queue}"

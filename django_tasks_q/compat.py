"""What our dependencies do not promise, listed in one place so that an upgrade fails in CI, not in production.

The ``redis://`` and ``django://`` transports subclass kombu's virtual and
Redis channels and replace parts of them; the worker reads a few of kombu's
bookkeeping attributes; the Redis code talks to redis-py's connections
below its client API; the admin overrides two private Django form methods.
None of these names is public API: a minor release may rename one, change
its parameters, or stop calling it, and the first sign would be a worker
that no longer consumes. :data:`PRIVATE_NAMES` lists every one of them with
the reason we use it, and ``tests/unit/test_compat.py`` checks each against
the installed versions: that it exists and, where it is a function, that it
takes the parameters we call it with or, for one we override, exactly the
parameters kombu calls ours with. A failure names the dependency, its
version, the name and why we use it -- the place to start the fix.

A name that only some supported versions have is used only where it is
found (``since``), by a shim next to the code that needs it, decided once at
import: :func:`accepts_argument` and :func:`requires_argument` are the
checks those shims use.

kombu 5.7 is the first kombu with type hints: a ``type: ignore`` for one of
its types also names ``unused-ignore``, so that mypy passes on older kombu.

Not listed: public API (``kombu.Connection``, ``redis.Redis`` commands,
Django's ORM) and the exception classes we import. amqp is used only
through its public API, but for the names below (a batch's publishes
without a confirm wait each; the transport that reads the socket ahead);
django-redis is not imported by the package.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Literal

__all__ = ["PRIVATE_NAMES", "Private", "accepts_argument", "requires_argument"]

#: How we depend on a name:
#: ``override`` -- we replace it; the dependency calls ours with exactly ``params``;
#: ``call`` -- we call it with ``params`` (by name or position); whatever else it takes must be optional;
#: ``attr`` -- we read or set it (a class or module attribute, or one its ``__init__`` sets);
#: ``hook`` -- we define it on our subclass and ``owner``'s code calls it.
Kind = Literal["override", "call", "attr", "hook"]


@dataclass(frozen=True)
class Private:
    """One name of a dependency that we rely on although it does not promise to keep it."""

    dependency: str  # the distribution, as pip names it
    owner: str  # dotted path of the module or class that has the name
    name: str
    kind: Kind
    why: str
    params: tuple[str, ...] = ()  # for override and call: parameter names, without self
    since: str | None = None  # only versions from this one have it; older ones get a shim (see why)


KV = "kombu.transport.virtual.Channel"
KR = "kombu.transport.redis.Channel"


def _kombu(owner: str, name: str, kind: Kind, why: str, *params: str, since: str | None = None) -> Private:
    return Private("kombu", owner, name, kind, why, params, since)


PRIVATE_NAMES: tuple[Private, ...] = (
    # -- django:// (broker/transport/django*.py): kombu's virtual channel storage interface ------------------
    _kombu(KV, "_get", "override", "django:// hands out rows it claimed in batches", "queue", "timeout"),
    _kombu(KV, "_put", "override", "django:// stores a message as a row (parked ones with visible_at)",
           "queue", "message"),
    _kombu(KV, "_size", "override", "django:// counts ready rows; the watchdog measures queue depth with it "
           "(worker/monitor.py)", "queue"),
    _kombu(KV, "_purge", "override", "django:// deletes waiting rows only, never claimed ones", "queue"),
    _kombu(KV, "_delete", "override", "django:// deletes a queue's rows", "queue", "args", "kwargs"),
    _kombu(KV, "_new_queue", "override", "django:// needs no table per queue, only the declared set",
           "queue", "kwargs"),
    _kombu(KV, "_has_queue", "override", "django:// sees queues other processes declared", "queue", "kwargs"),
    _kombu(KV, "_restore", "override", "django:// gives a message back by clearing its claim, never by a copy",
           "message"),
    _kombu(KV, "_get_and_deliver", "override", "django:// survives database errors while polling and deletes "
           "what a no_ack consumer takes", "queue", "callback"),
    _kombu(KV, "_lookup", "override", "django:// routes by the bindings every process stored; redis:// "
           "(redis_sends.py) calls it to route bulk sends", "exchange", "routing_key", "default"),
    _kombu(KV, "typeof", "override", "django:// reads an exchange's type from the stored bindings",
           "exchange", "default"),
    _kombu(KV, "_get_message_priority", "call", "the priority a message is filed under: django:// rows, "
           "redis:// lists (inverted there) and bulk sends (broker/publisher.py)", "message", "reverse"),
    _kombu(KV, "_inplace_augment_message", "call", "django://'s basic_publish stamps the message as kombu's "
           "does", "message", "exchange", "routing_key"),
    _kombu(KV, "decode_body", "call", "redis:// checks that kombu can decode a taken message's body",
           "body", "encoding"),
    _kombu(KV, "basic_publish", "override", "django:// inserts a row per bound queue in one transaction",
           "message", "exchange", "routing_key", "kwargs"),
    _kombu(KV, "basic_consume", "override", "django:// deletes what no_ack consumers take",
           "queue", "no_ack", "callback", "consumer_tag", "kwargs"),
    _kombu(KV, "basic_cancel", "override", "django:// gives back rows claimed for a cancelled consumer",
           "consumer_tag"),
    _kombu(KV, "basic_get", "override", "django:// deletes a no_ack get's row", "queue", "no_ack", "kwargs"),
    _kombu(KV, "basic_ack", "override", "django:// acks by deleting the row", "delivery_tag", "multiple"),
    _kombu(KV, "basic_reject", "override", "django:// deletes a rejected row unless requeued",
           "delivery_tag", "requeue"),
    _kombu(KV, "queue_delete", "override", "django:// deletes an unbound queue's rows too",
           "queue", "if_unused", "if_empty", "kwargs"),
    _kombu(KV, "exchange_declare", "override", "django:// refuses an exchange declared as another type",
           "exchange", "type", "durable", "auto_delete", "arguments", "nowait", "passive"),
    _kombu(KV, "exchange_delete", "override", "django:// deletes the exchange's stored bindings",
           "exchange", "if_unused", "nowait"),
    _kombu(KV, "queue_bind", "override", "django:// stores the binding for every process",
           "queue", "exchange", "routing_key", "arguments", "kwargs"),
    _kombu(KV, "queue_unbind", "override", "django:// deletes the stored binding",
           "queue", "exchange", "routing_key", "arguments", "kwargs"),
    _kombu(KV, "list_bindings", "override", "django:// lists every process's bindings"),
    _kombu(KV, "_tag_to_queue", "attr", "the queue of a consumer being cancelled (django://, redis://)"),
    _kombu(KV, "_qos", "attr", "the keeper reads the delivered tags without creating a QoS"),
    _kombu(KV, "_consumers", "attr", "django:// claims one row for a plain basic_get"),
    _kombu(KV, "_active_queues", "attr", "django:// and redis:// know which queues are still consumed"),
    _kombu(KV, "state", "attr", "this process's declared bindings (django:// routing; redis:// rewriting "
           "bindings Redis lost)"),
    _kombu(KV, "exchange_types", "attr", "our topic exchange with AMQP's # matching replaces kombu's"),
    _kombu(KV, "from_transport_options", "attr", "our transport options (binding_cache_ttl, database) are "
           "added to kombu's"),
    _kombu(KV, "deadletter_queue", "attr", "django:// files unroutable messages there when it is set"),
    _kombu(KV, "Message", "attr", "the worker wraps the channel's message class so that a payload with bad "
           "headers is refused, not lost (worker/intake.py)"),
    _kombu("kombu.transport.virtual.exchange.FanoutExchange", "_put_fanout", "hook",
           "a fanout publish on django:// goes through our _put_fanout (to every bound queue's rows)"),
    _kombu("kombu.transport.virtual.exchange.TopicExchange", "lookup", "override",
           "topic routing as AMQP matches (broker/topic.py)", "table", "exchange", "routing_key", "default"),
    _kombu("kombu.transport.virtual.exchange.TopicExchange", "prepare_bind", "call",
           "redis:// writes back the bindings Redis lost", "queue", "exchange", "routing_key", "arguments"),
    _kombu("kombu.transport.virtual.base.BrokerState", "queue_bindings", "call",
           "redis:// writes back the bindings this process declared", "queue"),
    _kombu("kombu.transport.virtual.base.BrokerState", "has_binding", "call",
           "django:// records a binding in kombu's state once", "queue", "exchange", "routing_key"),
    _kombu("kombu.transport.virtual.base.BrokerState", "binding_declare", "call",
           "django:// records this process's bindings as kombu does", "queue", "exchange", "routing_key",
           "arguments"),
    _kombu("kombu.transport.virtual.base.BrokerState", "binding_delete", "call",
           "django:// forgets an unbound binding", "queue", "exchange", "routing_key"),
    _kombu("kombu.transport.virtual.base.BrokerState", "queue_bindings_delete", "call",
           "django:// forgets a deleted queue's bindings", "queue"),
    _kombu("kombu.transport.virtual.base.BrokerState", "exchanges", "attr",
           "django:// routes by this process's declared exchanges too"),
    _kombu("kombu.transport.virtual.base.BrokerState", "bindings", "attr",
           "redis:// finds the queues bound to an exchange to write their bindings back"),
    _kombu("kombu.transport.virtual.base", "NotEquivalentError", "attr",
           "django://'s ExchangeTypeMismatch is one, so kombu's callers treat it as theirs"),
    _kombu("kombu.transport", "TRANSPORT_ALIASES", "attr", "register() adds the django:// scheme"),
    _kombu("kombu.transport.virtual.QoS", "_delivered", "attr",
           "the keeper refreshes the reservation of every delivered, unacked message"),
    _kombu("kombu.transport.virtual.QoS", "_dirty", "attr", "the keeper skips tags acked but not yet flushed"),
    _kombu("kombu.transport.virtual.QoS", "can_consume_max_estimate", "call",
           "a claim or take never takes more than the prefetch window has room for"),
    _kombu("kombu.transport.virtual.QoS", "append", "call",
           "redis://'s QoS skips kombu's unacked write for a message the take script recorded",
           "message", "delivery_tag"),
    _kombu("kombu.transport.virtual.QoS", "ack", "call",
           "redis://'s QoS writes the ack itself, then lets the virtual QoS forget the tag", "delivery_tag"),
    _kombu("kombu.transport.virtual.Message", "_raw", "attr",
           "kombu restores a message from _raw: a refused message keeps its original payload there"),
    _kombu("kombu.transport.virtual.Transport", "_deliver", "call",
           "redis:// delivers what one take script returned", "message", "queue"),
    _kombu("kombu.transport.virtual.Transport", "drain_events", "override",
           "django:// polls with backoff and wakes on acks", "connection", "timeout"),
    _kombu("kombu.transport.virtual.Transport", "close_connection", "override",
           "the keeper thread stops with the connection", "connection"),
    _kombu("kombu.transport.virtual.Transport", "cycle", "attr", "django:// polls through it; redis:// "
           "replaces it with a poller that takes batches without waiting"),
    _kombu("kombu.utils.scheduling.FairCycle", "get", "call", "django://'s drain_events polls the channels "
           "through the virtual transport's cycle", "callback", "timeout"),
    # -- redis:// (broker/transport/redis*.py): kombu's Redis channel --------------------------------------
    _kombu(KR, "_put", "override", "parks messages with the park header; pushes a wake token with each "
           "message", "queue", "message", "kwargs"),
    _kombu(KR, "_get_message_priority", "override", "priority 9 runs first, as on every other broker",
           "message", "reverse"),
    _kombu(KR, "conn_or_acquire", "override", "one client per channel instead of one per command", "client"),
    _kombu(KR, "basic_consume", "override", "starts the keeper; remembers no_ack queues, whose takes are not "
           "recorded unacked", "queue", "args", "kwargs"),
    _kombu(KR, "basic_publish", "override", "refuses a task no binding routes instead of dropping it",
           "message", "exchange", "routing_key", "kwargs"),
    _kombu(KR, "_basic_cancel", "override", "forgets a cancelled no_ack queue", "consumer_tag"),
    _kombu(KR, "get_table", "override", "caches the binding table for binding_cache_ttl", "exchange"),
    _kombu(KR, "_queue_bind", "override", "forgets the cached table on a new binding",
           "exchange", "routing_key", "pattern", "queue"),
    _kombu(KR, "_delete", "override", "forgets the cached table of a deleted queue's exchange",
           "queue", "exchange", "routing_key", "pattern", "args", "kwargs"),
    _kombu(KR, "_on_connection_disconnect", "override", "drops the raw connection and the take queued "
           "behind a wait", "connection"),
    _kombu(KR, "close", "override", "reads the replies still owed on the raw connection first"),
    _kombu(KR, "_brpop_start", "override", "waits for a wake token with a take queued behind the wait",
           "timeout"),
    _kombu(KR, "_brpop_read", "override", "reads the wait's and the take's answers", "options"),
    _kombu(KR, "_poll_error", "override", "a wait with a take behind it owes two answers: drop the "
           "connection instead", "type", "options"),
    _kombu(KR, "_size", "call", "the watchdog measures queue depth with it (worker/monitor.py)", "queue"),
    _kombu(KR, "_create_client", "call", "the channel's one client for commands outside the consumer",
           "asynchronous"),
    _kombu(KR, "_q_for_pri", "call", "the list key of a queue and priority, as kombu names it",
           "queue", "pri"),
    _kombu(KR, "_flush_brpop_reauth", "call", "kombu 5.7 re-authenticates the BRPOP connection (streaming "
           "credentials) once a wait's answer is read; our _brpop_read does it too where kombu has it, and "
           "our channel defines a no-op before kombu 5.7", since="5.7.0"),
    _kombu(KR, "_brpop_sent_at", "attr", "set by our _brpop_start as by kombu's, so kombu 5.7's BRPOP health "
           "check sees our waits; older kombu has no such check", since="5.7.0"),
    _kombu(KR, "brpop_timeout", "attr", "how long a wait blocks (kombu 5.6 made it configurable); our channel "
           "defaults it to kombu 5.5's fixed 1 s", since="5.6.0"),
    _kombu(KR, "_queue_cycle", "attr", "the fair order of the queues a wait and a take look at"),
    _kombu(KR, "_in_poll", "attr", "the connection a wait is in flight on"),
    _kombu(KR, "_closing", "attr", "a closing channel takes nothing more"),
    _kombu(KR, "client", "attr", "its connection carries the wait (set by the poller's _register)"),
    _kombu(KR, "active_queues", "attr", "the queues a wait and a take look at"),
    _kombu(KR, "priority_steps", "attr", "ten steps instead of kombu's four"),
    _kombu(KR, "sep", "attr", "splits a list key into queue and priority"),
    _kombu(KR, "unacked_key", "attr", "the take script records messages unacked as kombu does"),
    _kombu(KR, "unacked_index_key", "attr", "the take script and the keeper write the unacked index"),
    _kombu(KR, "visibility_timeout", "attr", "60 s, kept fresh by the keeper"),
    _kombu(KR, "unacked_mutex_expire", "attr", "30 s instead of kombu's 300"),
    _kombu("kombu.transport.redis", "virtual", "attr", "redis://'s QoS calls the virtual QoS past kombu's "
           "Redis QoS (kombu.transport.redis.virtual.QoS)"),
    _kombu("kombu.transport.redis.QoS", "ack", "override", "the ack goes out as raw RESP without waiting",
           "delivery_tag"),
    _kombu("kombu.transport.redis.QoS", "append", "override", "a message the take script recorded is not "
           "recorded again", "message", "delivery_tag"),
    _kombu("kombu.transport.redis.MultiChannelPoller", "get", "override", "takes the next batch before any "
           "wait while looks find messages", "callback", "timeout"),
    _kombu("kombu.transport.redis.MultiChannelPoller", "_register", "call", "sets client.connection, the "
           "connection our _brpop_start sends the wait on", "channel", "client", "type"),
    _kombu("kombu.transport.redis.MultiChannelPoller", "_channels", "attr", "the channels our poller may "
           "take for"),
    _kombu("kombu.transport.redis.MultiChannelPoller", "_in_protected_read", "attr", "a basic_cancel from a "
           "callback waits until our take is delivered, as in kombu's get()"),
    _kombu("kombu.transport.redis.MultiChannelPoller", "after_read", "attr", "runs what waited for the read"),
    _kombu("kombu.transport.redis.Transport", "cycle", "attr", "replaced by our poller"),
    # -- remote control ------------------------------------------------------------------------------------
    _kombu("kombu.pidbox.Mailbox", "_broadcast", "call", "taskinspect and taskcontrol gather replies "
           "(inspection.py), as Celery's inspect does", "command", "arguments", "destination", "reply",
           "timeout", "limit"),
    _kombu("kombu.pidbox.Mailbox", "_publish", "override", "signs a control message where its reply ticket is "
           "known (worker/control_signing.py SigningMailbox), with SIGNING_KEY set", "type", "arguments",
           "destination", "reply_ticket", "channel", "timeout", "serializer", "producer", "pattern", "matcher"),
    _kombu("kombu.pidbox.Mailbox", "__init__", "call", "the node queue exclusive and not durable, as Celery "
           "5.6's workers declare it (worker/remote_control.py passes them only where kombu takes them)",
           "namespace", "queue_exclusive", "queue_durable", since="5.6.0"),
    # -- redis-py, below the client API (broker/transport/redis*.py, results/redis.py) ----------------------
    Private("redis", "redis.connection.Connection", "_sock", "attr",
            "tells a new or reconnected socket, and writes early acks on it without redis-py's packing"),
    Private("redis", "redis.connection.Connection", "send_packed_command", "call",
            "writes RESP we packed, without a health check per write", ("command", "check_health")),
    Private("redis", "redis.connection.Connection", "read_response", "call",
            "reads the answers owed on our own connections"),
    Private("redis", "redis.connection.Connection", "can_read", "call",
            "a STARTED write's answer is waited for at most CONNECTION_WAIT seconds", ("timeout",)),
    Private("redis", "redis.ConnectionPool", "make_connection", "call",
            "a connection of the channel's (or a thread's) own, outside the pool's handing out"),
    Private("redis", "redis.ConnectionPool", "get_connection", "call",
            "a pooled connection for a pipelined write; before redis-py 5.3 it takes a command name "
            "(redis_sends passes one only there)", since="5.3.0"),
    Private("redis", "redis.BlockingConnectionPool", "_connections", "attr",
            "a thread's STARTED connection is dropped from the pool's list when the thread ends"),
    Private("redis", "redis.Redis", "parse_response", "call",
            "reads the BRPOP answer as kombu does", ("connection", "command_name")),
    # -- py-amqp (broker/amqp_confirms.py) ---------------------------------------------------------------------
    Private("amqp", "amqp.channel.Channel", "_basic_publish", "call",
            "publishes a batch without py-amqp's wait for each confirm, whose confirms are then read together",
            ("msg", "exchange", "routing_key")),
    Private("amqp", "amqp.channel.Channel", "events", "attr",
            "a batch's confirms are counted by basic_ack/basic_nack listeners: py-amqp reads a waiting frame "
            "before each publish, so a confirm can arrive while the batch is still going out"),
    # -- py-amqp (broker/transport/amqp.py: the socket read ahead) ---------------------------------------------
    Private("amqp", "amqp.transport.TCPTransport", "_read", "override",
            "reads what the socket holds, not one frame part at a time, and buffers the rest",
            ("n", "initial", "_errnos")),
    Private("amqp", "amqp.transport.SSLTransport", "_read", "override",
            "reads what the TLS socket holds, not one frame part at a time, and buffers the rest",
            ("n", "initial", "_errnos")),
    Private("amqp", "amqp.transport._AbstractTransport", "_read_buffer", "attr",
            "where py-amqp keeps bytes read ahead of a frame; our _read keeps the rest of each read there"),
    Private("amqp", "amqp.transport.TCPTransport", "_quick_recv", "attr",
            "the socket's recv that py-amqp's _read calls; ours asks it for more at once"),
    Private("amqp", "amqp.transport.SSLTransport", "_quick_recv", "attr",
            "the TLS socket's read that py-amqp's _read calls; ours asks it for more at once"),
    Private("amqp", "amqp.connection.Connection", "Transport", "override",
            "connect() makes the transport through it: ours makes the read-ahead one",
            ("host", "connect_timeout", "ssl", "read_timeout", "write_timeout", "socket_settings", "kwargs")),
    Private("kombu", "kombu.transport.pyamqp.Transport", "Connection", "attr",
            "the py-amqp connection class the transport connects with: ours, on the read-ahead transport"),
    # -- Django, croniter, django-tasks ------------------------------------------------------------------------
    Private("Django", "django.forms.models.BaseModelForm", "_post_clean", "override",
            "the periodic task form points the instance at its schedule row before the model is validated"),
    Private("Django", "django.forms.models.BaseModelForm", "_update_errors", "override",
            "the periodic task form drops the model's errors about schedule fields it set itself", ("errors",)),
    Private("Django", "django.db.backends.base.operations.BaseDatabaseOperations", "adapt_datetimefield_value",
            "call", "django:// claims with raw SQL and adapts its datetimes as the ORM would", ("value",)),
    Private("Django", "django.db.backends.base.base.BaseDatabaseWrapper", "run_on_commit", "attr",
            "delay_on_commit's batch appends its send callback as on_commit would, (savepoint ids, callback, "
            "robust), but in no savepoint, so that a rolled-back savepoint cannot drop it (core/commit_batch.py)"),
    Private("croniter", "croniter.croniter.croniter", "expand", "call",
            "validates one crontab field and names it in the error (beat/schedules.py)", ("expr_format",)),
    Private("django-tasks", "django_tasks.TaskResult", "_return_value", "attr",
            "a framework TaskResult carries the return value there (backends.py)"),
)


def accepts_argument(function: Callable, name: str) -> bool:
    """Does ``function`` take an argument called ``name`` (by that name, or through ``**kwargs``)?"""
    parameters = inspect.signature(function).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def requires_argument(function: Callable, name: str) -> bool:
    """Must every call of ``function`` pass ``name``?"""
    parameter = inspect.signature(function).parameters.get(name)
    return parameter is not None and parameter.default is parameter.empty and parameter.kind not in (
        parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)

"""The sending side of the ``redis://`` channel: what a publish writes, and how.

* Bulk sends (:meth:`Sends.put_messages`, :meth:`Sends.put_encoded`):
  one variadic ``LPUSH`` per list and chunk and one wake-token push per list,
  written as raw RESP on the channel's own connection.
* kombu's publish (the first send of a process to a queue, parked messages,
  dead letters) goes through :meth:`Sends.put` (kombu's ``_put``), which also parks a
  message carrying the park header in the delayed sorted set.
* A task no binding routes is refused, not dropped (:meth:`Sends.refuse_unroutable`),
  after the bindings this process declared are written again in case Redis
  lost them.

Every list a message goes to gets a wake token (``tasksq.wake:<list>``,
capped at :data:`WAKE_CAP`): consumers block on those, then take messages
with one script (:mod:`django_tasks_q.broker.transport.redis`).
"""

from __future__ import annotations

from time import time
from typing import TYPE_CHECKING, Any

from kombu.utils.json import dumps
from redis import ConnectionPool

from ...compat import requires_argument
from ...core.protocol import fast_json
from ...exceptions import ImproperlyConfigured
from ...resp import bulk_string, resp  # noqa: F401  (re-exported for the channel's modules)
from ..delayed import PARK_HEADER, REDIS_KEY, RELEASE_LEAD

if TYPE_CHECKING:
    from .redis import Channel

#: Most commands sent in one write by ``put_messages`` (bulk sends), and most messages in one LPUSH.
PIPELINE_COMMANDS = 1000
#: Wake tokens kept per list: enough to wake every consumer of a busy queue. This and the prefix are
#: the only copies: the Lua scripts that push wake tokens get them filled in (``redis_scripts``).
WAKE_CAP = 64
WAKE_PREFIX = "tasksq.wake:"
#: redis-py before 5.3 wants a command name (which it ignores) to hand out a pooled connection; later
#: versions warn when given one.
POOL_ARGS = ("_",) if requires_argument(ConnectionPool.get_connection, "command_name") else ()


def pipelined(client: Any, *commands: tuple) -> list:
    """Send ``commands`` in one write on one pooled connection and read their replies, in order.

    What redis-py's ``Pipeline`` does, without building a pipeline object
    per call: on this machine three commands take 38 us this way and 87 us
    through ``client.pipeline()``, more than the round trip itself. An error
    (the connection broke, or Redis answered an error) closes the connection
    so no reply is left unread on it, and is raised.
    """
    pool = client.connection_pool
    connection = pool.get_connection(*POOL_ARGS)
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        return [connection.read_response() for _ in commands]
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


class Sends:
    """The sending side of one ``redis://`` channel: bulk sends, parking, refusing what no binding routes.

    Composed into the channel (``channel.sends``); the channel's kombu hooks
    (``_put``, ``basic_publish``) and its bulk-send methods call it. What it
    reads of kombu's channel (routing, priorities, bindings) it reads through
    :attr:`channel`.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def put_messages(self, exchange: str, routing_key: str, messages: list[dict]) -> int | None:
        """Deliver kombu-format ``messages`` as ``basic_publish`` would, pipelined: one round trip per
        :data:`PIPELINE_COMMANDS` commands, and one wake-token push per list instead of one per message.

        Returns how many lists each message went to. ``None`` (nothing sent) for what this path does
        not handle: fanout exchanges (PUBLISH, not lists) and parked messages; the caller then goes
        through kombu. ``0`` (nothing sent) when no binding matches: kombu would drop the messages
        without a word, and the caller must not -- the binding table is gone when Redis lost its
        data (FLUSHALL, a restart without persistence), and declaring the queue again restores it.
        """
        if any(PARK_HEADER in message["headers"] for message in messages):
            return None
        priority = self.channel._get_message_priority
        return self.put_encoded(exchange, routing_key, [
            (fast_json(message) or dumps(message), priority(message, reverse=False)) for message in messages])

    def put_encoded(self, exchange: str, routing_key: str, messages: list[tuple[str, int]]) -> int | None:
        """:meth:`put_messages` for messages already written as kombu's JSON, each with its priority."""
        channel = self.channel
        if exchange and channel.typeof(exchange).type not in ("direct", "topic"):
            return None
        queues = channel._lookup(exchange, routing_key) if exchange else [routing_key]
        if not queues:
            channel.forget_table(exchange)  # look again next time: the queue may be declared meanwhile
            return 0
        q_for_pri = channel._q_for_pri
        bodies: dict[str, list[bytes]] = {}  # list key -> its messages as RESP bulk strings, in order
        for text, priority in messages:
            body = bulk_string(text.encode())
            for queue in queues:
                bodies.setdefault(q_for_pri(queue, priority), []).append(body)
        commands: list[bytes] = []
        for key, items in bodies.items():
            # one variadic LPUSH per list and chunk: the same order as one LPUSH per message, one reply
            for start in range(0, len(items), PIPELINE_COMMANDS):
                chunk = items[start:start + PIPELINE_COMMANDS]
                commands.append(b"*%d\r\n$5\r\nLPUSH\r\n%s%s"
                                % (len(chunk) + 2, bulk_string(key.encode()), b"".join(chunk)))
            wake = WAKE_PREFIX + key
            commands += [resp("LPUSH", wake, *[1] * min(len(items), WAKE_CAP)), resp("LTRIM", wake, 0, WAKE_CAP - 1)]
        raw = channel.raw
        for start in range(0, len(commands), PIPELINE_COMMANDS):
            chunk = commands[start:start + PIPELINE_COMMANDS]
            raw.call(b"".join(chunk), len(chunk))
        return len(queues)

    def restore_bindings(self, queue: str) -> None:
        """Write again the bindings of ``queue`` that this channel declared, when Redis has lost them.

        kombu declares a binding once per process (it remembers it in memory),
        so a FLUSHALL or a restart without persistence leaves publishers that
        route to nothing until they restart; declaring the queue again is not
        enough for the same reason.
        """
        channel = self.channel
        for exchange, routing_key, arguments in list(channel.state.queue_bindings(queue)):
            channel._queue_bind(exchange, *channel.typeof(exchange).prepare_bind(queue, exchange, routing_key,
                                                                                  arguments))

    def refuse_unroutable(self, message: dict, exchange: str, routing_key: str) -> None:
        """Raise when kombu's publish would drop ``message``: a task no binding routes.

        kombu sends a message whose routing key matches no binding to no list,
        without a word. For a task that is a task lost, so this raises
        ``ImproperlyConfigured`` naming the route (not a channel error, which
        kombu's publish would retry as a broken connection) -- after writing
        again the bindings this process declared on the exchange, in case Redis
        lost them. Other messages (remote-control replies to a client that is
        gone, say) are still dropped, as AMQP does.
        """
        channel = self.channel
        headers = message.get("headers")
        if (exchange and isinstance(headers, dict) and "task" in headers
                and channel.typeof(exchange).type != "fanout" and not channel._lookup(exchange, routing_key)):
            for queue in {queue for queue, bound, _ in channel.state.bindings if bound == exchange}:
                self.restore_bindings(queue)
            channel.forget_table(exchange)
            if not channel._lookup(exchange, routing_key):
                raise ImproperlyConfigured(
                    f"no queue is bound to exchange {exchange!r} ({channel.typeof(exchange).type}) with routing "
                    f"key {routing_key!r}: the task would be lost; nothing was sent")

    def put(self, queue: str, message: dict) -> None:
        """kombu's ``_put``: park a message carrying the park header, else push it and a wake token."""
        channel = self.channel
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        headers = message.get("headers")
        at = headers.get(PARK_HEADER) if isinstance(headers, dict) else None
        with channel.conn_or_acquire() as client:
            if at is not None and float(at) > time() + RELEASE_LEAD:
                client.zadd(REDIS_KEY, {f"{key}\n{dumps(message)}": float(at)})
                return
            wake = WAKE_PREFIX + key
            pipelined(client, ("LPUSH", key, dumps(message)), ("LPUSH", wake, 1), ("LTRIM", wake, 0, WAKE_CAP - 1))

"""AMQP topic matching for the brokers that emulate exchanges (Redis, django://).

A binding key is words separated by dots; ``*`` matches exactly one word and
``#`` zero or more. kombu's virtual ``TopicExchange`` turns keys into regular
expressions in which ``#`` needs at least one word (``media.video.#`` does not
match ``media.video``), unlike RabbitMQ; this module matches word by word, as
AMQP defines it, so a route behaves the same on every broker. It matches on
the binding key itself, not on the regex kombu stores beside it, so bindings
made by Celery processes are read the same way.
"""

from __future__ import annotations

from functools import lru_cache

from kombu.transport.virtual import exchange as kombu_exchange


def topic_matches(binding_key: str, routing_key: str) -> bool:
    return _match(tuple(binding_key.split(".")), tuple(routing_key.split(".")))


@lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return _match(rest, words) or (bool(words) and _match(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


class TopicExchange(kombu_exchange.TopicExchange):
    """kombu's topic exchange with AMQP's matching."""

    def lookup(self, table, exchange, routing_key, default):
        return {queue for binding_key, _regex, queue in table if topic_matches(binding_key, routing_key)}

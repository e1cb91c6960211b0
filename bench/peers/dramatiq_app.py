"""Dramatiq's side of the benchmark: a ``RabbitmqBroker`` with its default middleware.

With ``BENCH_RESULT_BACKEND`` set (the RabbitMQ round-trip row), the ``Results`` middleware is added with
a ``RedisBackend`` there, which ``add`` stores its result in: ``get_result(block=True)`` is Dramatiq's
blocking wait (a BRPOP on the result's key).

The actors use their own queue name because Dramatiq declares its queues with
dead-letter arguments, and RabbitMQ refuses to re-declare the ``default`` queue
that Celery and django-tasks-q declared without them.
"""

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# kombu reads the trailing "//" as the vhost "/"; pika wants it spelled "/%2F"
dramatiq.set_broker(RabbitmqBroker(url=URL[:-2] + "/%2F" if URL.endswith("//") else URL))

QUEUE = "bench-dramatiq"
RESULTS = os.environ.get("BENCH_RESULT_BACKEND")
if RESULTS:
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    dramatiq.get_broker().add_middleware(Results(backend=RedisBackend(url=RESULTS)))


@dramatiq.actor(queue_name=QUEUE)
def noop():
    return None


@dramatiq.actor(queue_name=QUEUE)
def touch(path):
    with open(path, "w") as fh:
        fh.write("done")


@dramatiq.actor(queue_name=QUEUE, **({"store_results": True} if RESULTS else {}))
def add(x, y):
    return x + y

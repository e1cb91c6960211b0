"""``pip install "django-tasks-q[redis]" "celery[redis]==5.5.*"``: a site migrating from Celery 5.5 keeps it.

Celery 5.5 pins kombu below 5.6, so pip must resolve kombu 5.5.x for both;
then a Celery client in that virtualenv sends a task by name to our worker
and reads its result from Redis, where ours writes Celery's key layout.
"""

import json

from .sites import ANSWER, QUEUE, RESULT_TIMEOUT, Site, check_round_trip

CELERY_CLIENT = '''\
import json
import celery, kombu
app = celery.Celery(broker={broker!r}, backend={backend!r})
result = app.send_task("shop.tasks.add", args=(20, 22), queue={queue!r})
print({answer!r} + json.dumps({{"value": result.get(timeout={timeout}), "celery": celery.__version__,
                               "kombu": kombu.__version__}}))
'''


def test_redis_extra_next_to_celery_5_5(dists, redis_url, tmp_path_factory):
    def celery_client_calls_our_worker(site: Site) -> None:
        out = site.run("celery client", [str(site.python), "-c", CELERY_CLIENT.format(
            broker=redis_url, backend=redis_url, queue=QUEUE, answer=ANSWER, timeout=RESULT_TIMEOUT)])
        answer = json.loads([line for line in out.splitlines() if line.startswith(ANSWER)][-1][len(ANSWER):])
        if not (answer["celery"].startswith("5.5.") and answer["kombu"].startswith("5.5.")):
            raise site.failure(f"pip resolved Celery {answer['celery']} with kombu {answer['kombu']}, "
                               "not 5.5.x with 5.5.x")
        if answer["value"] != 42:
            raise site.failure(f"Celery's send_task('shop.tasks.add', (20, 22)).get() gave {answer['value']!r}")

    site = check_round_trip(tmp_path_factory.mktemp("install-celery55"), dists.wheel, "redis",
                            broker_url=redis_url, result_backend=redis_url, beside=("celery[redis]==5.5.*",),
                            also=celery_client_calls_our_worker)
    print(f"[redis] next to Celery 5.5: {site.report()}")

"""``pip install django-tasks-q[amqp]``: the broker on a real RabbitMQ, results in the ORM."""

from .sites import ANSWER, RESULT_TIMEOUT, Site, check_round_trip

#: past one batch of 500: the bulk path publishes batches and reads their confirms after them (amqp_confirms)
BULK = '''\
import json
from shop.tasks import add
results = add.delay_many([(i, i) for i in range(600)])
print({answer!r} + json.dumps([result.get(timeout={timeout}) for result in results[-3:]]))
'''


def test_amqp_extra_round_trip_on_rabbitmq(dists, amqp_url, tmp_path_factory):
    def bulk_send_runs_every_task(site: Site) -> None:
        got = site.shell("delay_many() of 600", BULK.format(answer=ANSWER, timeout=RESULT_TIMEOUT))
        if got != [1194, 1196, 1198]:
            raise site.failure(f"the last three of delay_many([(i, i) ...600]) gave {got!r}, not [1194, 1196, 1198]")

    site = check_round_trip(tmp_path_factory.mktemp("install-amqp"), dists.wheel, "amqp",
                            broker_url=amqp_url, result_backend="django", also=bulk_send_runs_every_task)
    print(f"[amqp]: {site.report()}")

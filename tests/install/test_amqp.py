"""``pip install django-tasks-q[amqp]``: the broker on a real RabbitMQ, results in the ORM."""

from .sites import check_round_trip


def test_amqp_extra_round_trip_on_rabbitmq(dists, amqp_url, tmp_path_factory):
    site = check_round_trip(tmp_path_factory.mktemp("install-amqp"), dists.wheel, "amqp",
                            broker_url=amqp_url, result_backend="django")
    print(f"[amqp]: {site.report()}")

"""``pip install django-tasks-q`` (no extra): the embedded ``django://`` broker, results in the ORM."""

from .sites import check_round_trip


def test_no_extra_round_trip_on_the_database(dists, tmp_path_factory):
    site = check_round_trip(tmp_path_factory.mktemp("install-default"), dists.wheel, None,
                            broker_url="django://", result_backend="django")
    print(f"no extra: {site.report()}")

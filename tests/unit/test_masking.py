"""``mask_url``: the one masking function every printed URL goes through (issue 22, finding 6)."""

from __future__ import annotations

import pytest

from django_tasks_q.broker.connection import mask_url


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://cache:6379/0?password=s3cret", "redis://cache:6379/0?password=**"),
    ("rediss://cache:6380/1?ssl_cert_reqs=none&password=s3cret&db=2",
     "rediss://cache:6380/1?ssl_cert_reqs=none&password=**&db=2"),
    ("redis://:s3cret@cache/0?sentinel_password=s3cret", "redis://:**@cache/0?sentinel_password=**"),
    ("amqp://guest:s3cret@rabbit//?auth_token=s3cret&heartbeat=10",
     "amqp://guest:**@rabbit//?auth_token=**&heartbeat=10"),
    ("redis://:s3cret@cache/0?client_name=a@b", "redis://:**@cache/0?client_name=a@b"),  # an @ in a query value
    ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=**"),
])
def test_secret_query_parameters_are_masked(url, masked):
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url)


@pytest.mark.parametrize("url", [
    "sentinel://h1:26379?password=s3cret;sentinel://h2:26379?password=s3cret",
    "sentinel://:s3cret@h1:26379;sentinel://u:s3cret@h2:26379?password=s3cret",
    "redis://:s3cret@h1/0;redis://h2/0?password=s3cret",
])
def test_every_url_of_a_sentinel_or_failover_list_is_masked(url):
    masked = mask_url(url)
    assert "s3cret" not in masked
    assert masked.count(";") == url.count(";") and "h1" in masked and "h2" in masked


@pytest.mark.parametrize("url", ["redis://cache:6379/0?ssl_cert_reqs=none", "django://", "memory://", "django",
                                 "redis://cache/0?password=", "amqp://guest@rabbit//"])
def test_urls_without_secrets_are_unchanged(url):
    assert mask_url(url) == url

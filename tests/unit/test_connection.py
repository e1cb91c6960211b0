"""``mask_url``: broker passwords never reach a log line."""

from __future__ import annotations

import pytest

from django_tasks_q.broker.connection import mask_url


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:s3cret@cache:6379/0", "redis://:**@cache:6379/0"),
    ("rediss://default:s3cret@cache:6380/1?ssl_cert_reqs=none", "rediss://default:**@cache:6380/1?ssl_cert_reqs=none"),
    ("amqp://guest:s3cret@rabbit:5672//", "amqp://guest:**@rabbit:5672//"),
    ("amqp://user:p%40ss@rabbit/vhost", "amqp://user:**@rabbit/vhost"),
    ("amqp://user:p@ss@rabbit//", "amqp://user:**@rabbit//"),  # an unescaped @ in the password
])
def test_password_is_masked(url, masked):
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "p@ss" not in mask_url(url) and "p%40ss" not in mask_url(url)


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "amqp://guest@rabbit//", "django://", "memory://",
                                 "sentinel://h1:26379;sentinel://h2:26379"])
def test_url_without_password_is_unchanged(url):
    assert mask_url(url) == url


@pytest.mark.parametrize("url", [
    "sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2:26379",
    "amqp://u:s3cret@r1//;amqp://u:s3cret@r2//",
])
def test_every_password_of_a_failover_list_is_masked(url):
    masked = mask_url(url)
    assert "s3cret" not in masked
    assert masked.count("**") == 2

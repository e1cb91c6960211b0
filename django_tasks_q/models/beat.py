"""``BeatLease``: which ``taskbeat`` process is the leader right now."""

from django.db import models


class BeatLease(models.Model):
    """One row per lease name; the holder renews ``expires_at`` while it lives.

    A lease is taken with one conditional UPDATE (free, expired, or already
    ours), so two beats never both believe they lead; a dead leader's lease
    runs out and another beat takes over.
    """

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=255, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "django_tasks_q"

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or 'free'} until {self.expires_at}"

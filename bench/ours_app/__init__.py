"""A bench-only Django app for ours: the ``incr`` task of the ``prefork2`` row.

Installed by ``bench/ours_settings.py`` (the testproject's settings plus this
app), which the bench selects with ``DJANGO_SETTINGS_MODULE`` for the rows
that need the task; the testproject itself does not know it.
"""

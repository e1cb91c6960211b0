"""Preloaded by the prefork pool's fork server (pools/prefork.py): Django is set up once there, so each
child forked from it starts with the settings, apps and tasks loaded -- and with no other thread's locks."""

import django

django.setup()

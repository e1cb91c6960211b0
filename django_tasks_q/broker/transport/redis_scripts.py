"""The Lua scripts of the ``redis://`` consumer (:mod:`django_tasks_q.broker.transport.redis`).

Each runs as one step on the server: a message is always in its list, in
the delayed set, or recorded unacked -- never only in a worker's memory.
The scripts are the ``lua/*.lua`` files beside this module, which say what
each takes and returns; the wake-token prefix and cap they use are
:data:`~.redis_sends.WAKE_PREFIX` and :data:`~.redis_sends.WAKE_CAP`.
"""

from ...lua import load_script
from .redis_sends import WAKE_CAP, WAKE_PREFIX

#: Move due parked messages to their lists (``lua/release.lua``).
RELEASE_SCRIPT = load_script(__name__, "release.lua", WAKE_PREFIX=WAKE_PREFIX, WAKE_CAP=WAKE_CAP)
#: Take messages from lists and record them unacked in the same step (``lua/take.lua``).
POP_SCRIPT = load_script(__name__, "take.lua")
#: Put back what a take returned but the consumer will not deliver (``lua/give_back.lua``).
GIVE_BACK_SCRIPT = load_script(__name__, "give_back.lua", WAKE_PREFIX=WAKE_PREFIX, WAKE_CAP=WAKE_CAP)

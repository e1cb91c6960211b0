"""Admin registrations, one module per model family."""

from . import dashboard  # noqa: F401
from . import results  # noqa: F401
from . import routing  # noqa: F401
from . import schedules  # noqa: F401
from . import workers  # noqa: F401

"""ORM models, one module per family; imported here so Django finds them."""

from .results import TaskResult
from .transport import BrokerMessage

__all__ = ["BrokerMessage", "TaskResult"]

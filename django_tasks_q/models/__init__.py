"""ORM models, one module per family; imported here so Django finds them."""

from .activity import TaskActivity, TaskEvent
from .beat import BeatLease
from .control import RateLimitBucket, Revocation
from .dashboard import Dashboard
from .groups import ChordCounter, GroupResultMeta
from .results import TaskResult
from .routing import Queue, TaskRoute
from .schedules import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from .transport import BrokerBinding, BrokerMessage
from .workers import Worker

__all__ = ["BeatLease", "BrokerBinding", "BrokerMessage", "ChordCounter", "ClockedSchedule", "CrontabSchedule",
           "Dashboard", "GroupResultMeta", "IntervalSchedule", "PeriodicTask", "Queue", "RateLimitBucket", "Revocation",
           "SolarSchedule", "TaskActivity", "TaskEvent", "TaskResult", "TaskRoute", "Worker"]

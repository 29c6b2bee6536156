"""Client for the memaudit service: upload datasets, run audits, fetch scores, exports and reports."""

from memaudit_client.client import EXPORT_FORMATS, JsonObject, MemauditClient
from memaudit_client.errors import MemauditError, WaitTimeout
from memaudit_client.states import ACTIVE_STATES, TERMINAL_STATES, JobState

__version__ = "0.1.0"
__all__ = [
    "ACTIVE_STATES",
    "EXPORT_FORMATS",
    "TERMINAL_STATES",
    "JobState",
    "JsonObject",
    "MemauditClient",
    "MemauditError",
    "WaitTimeout",
]

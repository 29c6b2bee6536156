"""Client for the memaudit service: upload datasets, run audits, fetch scores, exports and reports."""

from memaudit_client.client import EXPORT_FORMATS, TERMINAL_STATES, JsonObject, MemauditClient
from memaudit_client.errors import MemauditError, WaitTimeout

__version__ = "0.1.0"
__all__ = [
    "EXPORT_FORMATS",
    "TERMINAL_STATES",
    "JsonObject",
    "MemauditClient",
    "MemauditError",
    "WaitTimeout",
]

"""Replicated data types and their exactly-once application.

The consensus core treats a NORMAL entry's `data` as opaque; this package
defines it (a command envelope, envelope.py), loads the data type a group
runs (loader.py), and applies committed entries with request deduplication
that survives snapshots (applier.py, sessions.py). No I/O, no clocks.
"""

from raftfleet_agent.statemachine.applier import Applier, ApplierStatistics
from raftfleet_agent.statemachine.builtin import KV, Counter
from raftfleet_agent.statemachine.envelope import (
    CommandEnvelope,
    decode_command,
    encode_command,
)
from raftfleet_agent.statemachine.loader import LoadedType, load_data_type
from raftfleet_agent.statemachine.protocol import (
    DATA_TYPE_ERROR,
    INVALID_ARGUMENT,
    REQUEST_EXPIRED,
    ApplyOrderError,
    ApplyResult,
    DataType,
    DataTypeError,
    InvalidArgument,
    SnapshotError,
)
from raftfleet_agent.statemachine.sessions import (
    DEFAULT_MAX_RESULTS_PER_SESSION,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_WINDOW_MS,
)

__all__ = [
    "DATA_TYPE_ERROR",
    "DEFAULT_MAX_RESULTS_PER_SESSION",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_WINDOW_MS",
    "INVALID_ARGUMENT",
    "KV",
    "REQUEST_EXPIRED",
    "Applier",
    "ApplierStatistics",
    "ApplyOrderError",
    "ApplyResult",
    "CommandEnvelope",
    "Counter",
    "DataType",
    "DataTypeError",
    "InvalidArgument",
    "LoadedType",
    "SnapshotError",
    "decode_command",
    "encode_command",
    "load_data_type",
]

"""Protocol numbers and limits of the PostgreSQL v3 wire protocol."""

from __future__ import annotations

PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104

# PostgreSQL's own limits: MAX_STARTUP_PACKET_LENGTH, PQ_SMALL/LARGE_MESSAGE_LIMIT.
MAX_STARTUP_PACKET = 10_000
SMALL_MESSAGE_LIMIT = 10_000
LARGE_MESSAGE_LIMIT = 0x3FFFFFFF  # 1 GiB - 1

# Frontend message types whose size is capped by config (they carry SQL or parameters).
LARGE_FRONTEND_TYPES: frozenset[int] = frozenset(b"QPBF")
# Frontend messages that stream (CopyData) and are never buffered whole.
STREAMED_TYPES: frozenset[int] = frozenset(b"d")
# Every frontend message type a v3 client may send after startup ('p' covers all
# password/SASL responses).
FRONTEND_TYPES: frozenset[int] = frozenset(b"QPBEDCSHXFdcfp")

TX_IDLE: int = ord("I")
TX_IN_BLOCK: int = ord("T")
TX_FAILED: int = ord("E")

SQLSTATE_PROTOCOL_VIOLATION = "08P01"
SQLSTATE_CONNECTION_FAILURE = "08006"
SQLSTATE_CANNOT_CONNECT = "08001"
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"
SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
SQLSTATE_PROGRAM_LIMIT = "54000"
SQLSTATE_ADMIN_SHUTDOWN = "57P01"
SQLSTATE_TOO_MANY_CONNECTIONS = "53300"
SQLSTATE_INTERNAL_ERROR = "XX000"
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"
SQLSTATE_QUERY_CANCELED = "57014"

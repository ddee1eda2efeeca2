"""Condition names for the SQLSTATE codes that show up in audit trails (PostgreSQL Appendix A).

Not the full table: the codes a reviewer meets in practice. Unknown codes fall back to their
class name (the first two characters), which PostgreSQL defines for every code.
"""

from __future__ import annotations

_CONDITIONS: dict[str, str] = {
    "00000": "successful_completion",
    "08000": "connection_exception",
    "08003": "connection_does_not_exist",
    "08006": "connection_failure",
    "08P01": "protocol_violation",
    "0A000": "feature_not_supported",
    "21000": "cardinality_violation",
    "22001": "string_data_right_truncation",
    "22003": "numeric_value_out_of_range",
    "22007": "invalid_datetime_format",
    "22008": "datetime_field_overflow",
    "22012": "division_by_zero",
    "22P02": "invalid_text_representation",
    "23502": "not_null_violation",
    "23503": "foreign_key_violation",
    "23505": "unique_violation",
    "23514": "check_violation",
    "23P01": "exclusion_violation",
    "25001": "active_sql_transaction",
    "25P01": "no_active_sql_transaction",
    "25P02": "in_failed_sql_transaction",
    "25006": "read_only_sql_transaction",
    "26000": "invalid_sql_statement_name",
    "28000": "invalid_authorization_specification",
    "28P01": "invalid_password",
    "34000": "invalid_cursor_name",
    "3D000": "invalid_catalog_name",
    "3F000": "invalid_schema_name",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "42501": "insufficient_privilege",
    "42601": "syntax_error",
    "42602": "invalid_name",
    "42701": "duplicate_column",
    "42702": "ambiguous_column",
    "42703": "undefined_column",
    "42704": "undefined_object",
    "42710": "duplicate_object",
    "42723": "duplicate_function",
    "42725": "ambiguous_function",
    "42803": "grouping_error",
    "42804": "datatype_mismatch",
    "42830": "invalid_foreign_key",
    "42883": "undefined_function",
    "42P01": "undefined_table",
    "42P04": "duplicate_database",
    "42P06": "duplicate_schema",
    "42P07": "duplicate_table",
    "42P18": "indeterminate_datatype",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "54000": "program_limit_exceeded",
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "57P01": "admin_shutdown",
    "57P03": "cannot_connect_now",
    "58P01": "undefined_file",
    "P0001": "raise_exception",
    "XX000": "internal_error",
}

_CLASSES: dict[str, str] = {
    "08": "connection exception",
    "0A": "feature not supported",
    "22": "data exception",
    "23": "integrity constraint violation",
    "25": "invalid transaction state",
    "28": "invalid authorization specification",
    "3D": "invalid catalog name",
    "40": "transaction rollback",
    "42": "syntax error or access rule violation",
    "53": "insufficient resources",
    "54": "program limit exceeded",
    "55": "object not in prerequisite state",
    "57": "operator intervention",
    "58": "system error",
    "P0": "PL/pgSQL error",
    "XX": "internal error",
}


def condition_name(sqlstate: str) -> str:
    """``"42P01"`` → ``"undefined_table"``; an unknown code → its class, e.g. ``"class 22: data
    exception"``; an unknown class → ``""``."""
    name = _CONDITIONS.get(sqlstate)
    if name:
        return name
    klass = _CLASSES.get(sqlstate[:2])
    return f"class {sqlstate[:2]}: {klass}" if klass else ""

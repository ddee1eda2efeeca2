"""Command tags and pgAudit statement classes for raw parse-tree statement nodes.

The tags follow PostgreSQL's ``CreateCommandTag`` (src/backend/tcop/utility.c) so that policies
can be written in the vocabulary the server itself uses in logs and completion tags. The classes
follow pgAudit's grouping (read, write, ddl, role, function, misc).
"""

from __future__ import annotations

import re
from typing import Any

from proxy.sql.facts import StatementClass

# ObjectType enum names (as they appear in libpg_query's JSON) to SQL object words.
_OBJECT_WORDS: dict[str, str] = {
    "OBJECT_ACCESS_METHOD": "ACCESS METHOD",
    "OBJECT_AGGREGATE": "AGGREGATE",
    "OBJECT_CAST": "CAST",
    "OBJECT_COLLATION": "COLLATION",
    "OBJECT_CONVERSION": "CONVERSION",
    "OBJECT_DATABASE": "DATABASE",
    "OBJECT_DOMAIN": "DOMAIN",
    "OBJECT_EVENT_TRIGGER": "EVENT TRIGGER",
    "OBJECT_EXTENSION": "EXTENSION",
    "OBJECT_FDW": "FOREIGN DATA WRAPPER",
    "OBJECT_FOREIGN_SERVER": "SERVER",
    "OBJECT_FOREIGN_TABLE": "FOREIGN TABLE",
    "OBJECT_FUNCTION": "FUNCTION",
    "OBJECT_INDEX": "INDEX",
    "OBJECT_LANGUAGE": "LANGUAGE",
    "OBJECT_LARGEOBJECT": "LARGE OBJECT",
    "OBJECT_MATVIEW": "MATERIALIZED VIEW",
    "OBJECT_OPCLASS": "OPERATOR CLASS",
    "OBJECT_OPERATOR": "OPERATOR",
    "OBJECT_OPFAMILY": "OPERATOR FAMILY",
    "OBJECT_POLICY": "POLICY",
    "OBJECT_PROCEDURE": "PROCEDURE",
    "OBJECT_PUBLICATION": "PUBLICATION",
    "OBJECT_ROLE": "ROLE",
    "OBJECT_ROUTINE": "ROUTINE",
    "OBJECT_RULE": "RULE",
    "OBJECT_SCHEMA": "SCHEMA",
    "OBJECT_SEQUENCE": "SEQUENCE",
    "OBJECT_STATISTIC_EXT": "STATISTICS",
    "OBJECT_SUBSCRIPTION": "SUBSCRIPTION",
    "OBJECT_TABCONSTRAINT": "TABLE",
    "OBJECT_TABLE": "TABLE",
    "OBJECT_TABLESPACE": "TABLESPACE",
    "OBJECT_TRANSFORM": "TRANSFORM",
    "OBJECT_TRIGGER": "TRIGGER",
    "OBJECT_TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "OBJECT_TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "OBJECT_TSPARSER": "TEXT SEARCH PARSER",
    "OBJECT_TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OBJECT_TYPE": "TYPE",
    "OBJECT_VIEW": "VIEW",
    "OBJECT_COLUMN": "TABLE",
    "OBJECT_ATTRIBUTE": "TYPE",
    "OBJECT_DEFAULT": "TABLE",
    "OBJECT_DOMCONSTRAINT": "DOMAIN",
}

# Object types whose names are relations (tables, views, sequences, indexes...).
RELATION_OBJECTS = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_INDEX",
        "OBJECT_SEQUENCE",
        "OBJECT_FOREIGN_TABLE",
    }
)

_FIXED_TAGS: dict[str, str] = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CreateStmt": "CREATE TABLE",
    "CreateForeignTableStmt": "CREATE FOREIGN TABLE",
    "IndexStmt": "CREATE INDEX",
    "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "ViewStmt": "CREATE VIEW",
    "CreateTrigStmt": "CREATE TRIGGER",
    "RuleStmt": "CREATE RULE",
    "CreateRoleStmt": "CREATE ROLE",
    "AlterRoleStmt": "ALTER ROLE",
    "AlterRoleSetStmt": "ALTER ROLE",
    "DropRoleStmt": "DROP ROLE",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "CopyStmt": "COPY",
    "VariableShowStmt": "SHOW",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "ExplainStmt": "EXPLAIN",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "TruncateStmt": "TRUNCATE TABLE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY",
    "LockStmt": "LOCK TABLE",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "CheckPointStmt": "CHECKPOINT",
    "ClusterStmt": "CLUSTER",
    "ReindexStmt": "REINDEX",
    "LoadStmt": "LOAD",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "AlterDatabaseStmt": "ALTER DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE",
    "AlterDatabaseRefreshCollStmt": "ALTER DATABASE",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "AlterExtensionStmt": "ALTER EXTENSION",
    "AlterExtensionContentsStmt": "ALTER EXTENSION",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "AlterEventTrigStmt": "ALTER EVENT TRIGGER",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "CreatePolicyStmt": "CREATE POLICY",
    "AlterPolicyStmt": "ALTER POLICY",
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
    "AlterSubscriptionStmt": "ALTER SUBSCRIPTION",
    "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    "CreatePublicationStmt": "CREATE PUBLICATION",
    "AlterPublicationStmt": "ALTER PUBLICATION",
    "CreateUserMappingStmt": "CREATE USER MAPPING",
    "AlterUserMappingStmt": "ALTER USER MAPPING",
    "DropUserMappingStmt": "DROP USER MAPPING",
    "CreateForeignServerStmt": "CREATE SERVER",
    "AlterForeignServerStmt": "ALTER SERVER",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "AlterFdwStmt": "ALTER FOREIGN DATA WRAPPER",
    "CreateDomainStmt": "CREATE DOMAIN",
    "AlterDomainStmt": "ALTER DOMAIN",
    "CompositeTypeStmt": "CREATE TYPE",
    "CreateEnumStmt": "CREATE TYPE",
    "CreateRangeStmt": "CREATE TYPE",
    "AlterEnumStmt": "ALTER TYPE",
    "AlterTypeStmt": "ALTER TYPE",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "AlterTableSpaceOptionsStmt": "ALTER TABLESPACE",
    "DropOwnedStmt": "DROP OWNED",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "CreateCastStmt": "CREATE CAST",
    "CreateConversionStmt": "CREATE CONVERSION",
    "CreateOpClassStmt": "CREATE OPERATOR CLASS",
    "CreateOpFamilyStmt": "CREATE OPERATOR FAMILY",
    "AlterOpFamilyStmt": "ALTER OPERATOR FAMILY",
    "AlterOperatorStmt": "ALTER OPERATOR",
    "CreateStatsStmt": "CREATE STATISTICS",
    "AlterStatsStmt": "ALTER STATISTICS",
    "CreateAmStmt": "CREATE ACCESS METHOD",
    "CreateTransformStmt": "CREATE TRANSFORM",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "AlterCollationStmt": "ALTER COLLATION",
    "AlterTSDictionaryStmt": "ALTER TEXT SEARCH DICTIONARY",
    "AlterTSConfigurationStmt": "ALTER TEXT SEARCH CONFIGURATION",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "AlterObjectDependsStmt": "ALTER",
}

_TRANSACTION_TAGS: dict[str, str] = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_DEFINE_TAGS: dict[str, str] = {
    "OBJECT_AGGREGATE": "CREATE AGGREGATE",
    "OBJECT_OPERATOR": "CREATE OPERATOR",
    "OBJECT_TYPE": "CREATE TYPE",
    "OBJECT_TSPARSER": "CREATE TEXT SEARCH PARSER",
    "OBJECT_TSDICTIONARY": "CREATE TEXT SEARCH DICTIONARY",
    "OBJECT_TSTEMPLATE": "CREATE TEXT SEARCH TEMPLATE",
    "OBJECT_TSCONFIGURATION": "CREATE TEXT SEARCH CONFIGURATION",
    "OBJECT_COLLATION": "CREATE COLLATION",
}

_DISCARD_TAGS: dict[str, str] = {
    "DISCARD_ALL": "DISCARD ALL",
    "DISCARD_PLANS": "DISCARD PLANS",
    "DISCARD_TEMP": "DISCARD TEMP",
    "DISCARD_SEQUENCES": "DISCARD SEQUENCES",
}

_ALTER_TABLE_TAGS: dict[str, str] = {
    "OBJECT_TABLE": "ALTER TABLE",
    "OBJECT_INDEX": "ALTER INDEX",
    "OBJECT_SEQUENCE": "ALTER SEQUENCE",
    "OBJECT_VIEW": "ALTER VIEW",
    "OBJECT_MATVIEW": "ALTER MATERIALIZED VIEW",
    "OBJECT_FOREIGN_TABLE": "ALTER FOREIGN TABLE",
    "OBJECT_TYPE": "ALTER TYPE",
}

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _object_word(objtype: Any) -> str:
    if not isinstance(objtype, str):
        return "TABLE"  # enum value 0 is omitted in JSON; ObjectType 0 is ACCESS_METHOD, rare
    return _OBJECT_WORDS.get(objtype, objtype.removeprefix("OBJECT_").replace("_", " "))


def command_tag(node_type: str, body: dict[str, Any]) -> str:
    """The tag PostgreSQL's CreateCommandTag gives this raw statement."""
    tag = _FIXED_TAGS.get(node_type)
    if tag is not None:
        return tag
    match node_type:
        case "CreateFunctionStmt":
            return "CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION"
        case "AlterFunctionStmt":
            kind = body.get("objtype")
            return (
                "ALTER PROCEDURE"
                if kind == "OBJECT_PROCEDURE"
                else ("ALTER ROUTINE" if kind == "OBJECT_ROUTINE" else "ALTER FUNCTION")
            )
        case "CreateTableAsStmt":
            if body.get("objtype") == "OBJECT_MATVIEW":
                return "CREATE MATERIALIZED VIEW"
            return "SELECT" if body.get("is_select_into") else "CREATE TABLE AS"
        case "DropStmt":
            return "DROP " + _object_word(body.get("removeType"))
        case "AlterTableStmt":
            return _ALTER_TABLE_TAGS.get(str(body.get("objtype")), "ALTER TABLE")
        case "RenameStmt":
            return "ALTER " + _object_word(body.get("renameType"))
        case "AlterObjectSchemaStmt" | "AlterOwnerStmt":
            return "ALTER " + _object_word(body.get("objectType"))
        case "AlterTableMoveAllStmt":
            return "ALTER " + _object_word(body.get("objtype"))
        case "GrantStmt":
            return "GRANT" if body.get("is_grant") else "REVOKE"
        case "GrantRoleStmt":
            return "GRANT ROLE" if body.get("is_grant") else "REVOKE ROLE"
        case "VariableSetStmt":
            return "RESET" if body.get("kind") in ("VAR_RESET", "VAR_RESET_ALL") else "SET"
        case "TransactionStmt":
            return _TRANSACTION_TAGS.get(str(body.get("kind")), "BEGIN")
        case "DeallocateStmt":
            return "DEALLOCATE ALL" if body.get("isall") or not body.get("name") else "DEALLOCATE"
        case "VacuumStmt":
            return "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
        case "ClosePortalStmt":
            return "CLOSE CURSOR" if body.get("portalname") else "CLOSE CURSOR ALL"
        case "FetchStmt":
            return "MOVE" if body.get("ismove") else "FETCH"
        case "DiscardStmt":
            return _DISCARD_TAGS.get(str(body.get("target")), "DISCARD ALL")
        case "DefineStmt":
            return _DEFINE_TAGS.get(str(body.get("kind")), "CREATE AGGREGATE")
    # Unknown to this table: derive "CreateFooStmt" -> "CREATE FOO".
    return _CAMEL.sub(" ", node_type.removesuffix("Stmt")).upper()


_CLASS_BY_NODE: dict[str, StatementClass] = {
    "SelectStmt": "read",
    "DeclareCursorStmt": "read",
    "InsertStmt": "write",
    "UpdateStmt": "write",
    "DeleteStmt": "write",
    "MergeStmt": "write",
    "TruncateStmt": "write",
    "CreateRoleStmt": "role",
    "AlterRoleStmt": "role",
    "AlterRoleSetStmt": "role",
    "DropRoleStmt": "role",
    "GrantStmt": "role",
    "GrantRoleStmt": "role",
    "AlterDefaultPrivilegesStmt": "role",
    "DoStmt": "function",
    "CallStmt": "function",
    "VariableSetStmt": "misc",
    "VariableShowStmt": "misc",
    "TransactionStmt": "misc",
    "PrepareStmt": "misc",
    "ExecuteStmt": "misc",
    "DeallocateStmt": "misc",
    "ExplainStmt": "misc",
    "ListenStmt": "misc",
    "UnlistenStmt": "misc",
    "NotifyStmt": "misc",
    "LockStmt": "misc",
    "FetchStmt": "misc",
    "ClosePortalStmt": "misc",
    "DiscardStmt": "misc",
    "CheckPointStmt": "misc",
    "VacuumStmt": "misc",
    "ClusterStmt": "misc",
    "ReindexStmt": "misc",
    "LoadStmt": "misc",
    "ConstraintsSetStmt": "misc",
}


def statement_class(node_type: str, body: dict[str, Any]) -> StatementClass:
    """pgAudit's class for the statement itself (hidden commands add their own classes)."""
    if node_type == "SelectStmt" and _has_into(body):
        return "ddl"  # SELECT INTO creates a table (pgAudit logs it as DDL)
    if node_type == "CopyStmt":
        return "write" if body.get("is_from") else "read"
    return _CLASS_BY_NODE.get(node_type, "ddl")


def _has_into(select: dict[str, Any]) -> bool:
    if "intoClause" in select:
        return True
    larg = select.get("larg")
    return isinstance(larg, dict) and _has_into(larg)

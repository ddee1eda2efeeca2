"""What PostgreSQL's own catalog says about its built-in functions, as shipped data.

``builtins.json`` is generated from ``pg_proc``/``pg_class`` of real servers by
:mod:`proxy.sql.catalog.generate` (one section per major version) and checked against the test
server by ``tests/test_sql_catalog.py``. Name-based lists are the union over the shipped
versions: a name that does something notable on one supported version is treated so on all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any


def _load() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("builtins.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


_DATA = _load()
_VERSIONS: dict[int, dict[str, Any]] = {int(k): v for k, v in _DATA["versions"].items()}


def _union(key: str) -> frozenset[str]:
    return frozenset(name for v in _VERSIONS.values() for name in v[key])


def _oid_names() -> dict[int, str | None]:
    """OID -> name over every version; None where versions disagree (never guess)."""
    out: dict[int, str | None] = {}
    for section in _VERSIONS.values():
        for oid, name in section["functions"].items():
            key = int(oid)
            out[key] = name if out.get(key, name) == name else None
    return out


_OID_NAMES = _oid_names()

SHIPPED_VERSIONS: tuple[int, ...] = tuple(sorted(_VERSIONS))
# Built-ins that run SQL built at call time (see generate.DYNAMIC_SQL_SYMBOLS).
DYNAMIC_SQL_FUNCTIONS: frozenset[str] = _union("dynamic_sql")
# Built-ins that read or list files of the database server.
SERVER_FILE_FUNCTIONS: frozenset[str] = _union("server_files")
# Built-ins whose EXECUTE privilege is not granted to PUBLIC by default.
PRIVILEGED_FUNCTIONS: frozenset[str] = _union("privileged")


def _regclass() -> dict[str, frozenset[int]]:
    merged: dict[str, set[int]] = {}
    for section in _VERSIONS.values():
        for name, positions in section["regclass_arguments"].items():
            merged.setdefault(name, set()).update(positions)
    return {k: frozenset(v) for k, v in merged.items()}


# function name -> argument positions of type regclass in some overload; "name:argname" keys
# give the position of a named regclass parameter (for ``f(arg => 'x')``).
REGCLASS_ARGUMENTS: Mapping[str, frozenset[int]] = _regclass()


def _view_functions() -> dict[tuple[str, str], frozenset[str]]:
    merged: dict[tuple[str, str], set[str]] = {}
    for section in _VERSIONS.values():
        for key, names in section["view_functions"].items():
            schema, view = key.split(".", 1)
            merged.setdefault((schema, view), set()).update(names)
    return {k: frozenset(v) for k, v in merged.items()}


# (schema, view) -> notable functions reading that system view calls (privileged or classified).
VIEW_FUNCTIONS: Mapping[tuple[str, str], frozenset[str]] = _view_functions()


def builtin_function_name(oid: int, major: int | None = None) -> str | None:
    """The name of the built-in function with this OID (fixed per major version), or None.

    With ``major`` (the server's major version) and a shipped section for it, only that
    section answers; otherwise an OID answers when every shipped version agrees on its name.
    """
    section = _VERSIONS.get(major) if major is not None else None
    if section is not None:
        name = section["functions"].get(str(oid))
        return str(name) if name is not None else None
    return _OID_NAMES.get(oid)


__all__ = [
    "DYNAMIC_SQL_FUNCTIONS",
    "PRIVILEGED_FUNCTIONS",
    "REGCLASS_ARGUMENTS",
    "SERVER_FILE_FUNCTIONS",
    "SHIPPED_VERSIONS",
    "VIEW_FUNCTIONS",
    "builtin_function_name",
]

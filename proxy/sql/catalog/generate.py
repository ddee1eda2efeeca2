"""Generate ``builtins.json`` from a running server's catalog: ``python3 -m
proxy.sql.catalog.generate postgresql://…``.

The shipped file holds one section per PostgreSQL major version (the sections of other versions
are kept when one is regenerated). Everything in a section is read from ``pg_proc``,
``pg_class`` and the view definitions of that server; the only inputs written by hand are the
C entry points in :data:`DYNAMIC_SQL_SYMBOLS` and :data:`SERVER_FILE_SYMBOLS`, which say what a
C function *does* — something the catalog does not record — taken from PostgreSQL's source
(file names given below). Matching on the C symbol (``prosrc``) rather than the SQL name finds
every overload and alias the catalog has for that code.

``tests/test_sql_catalog.py`` regenerates the section of the test server's version and compares
it with the shipped file, so a catalog change cannot go unnoticed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).with_name("builtins.json")

# OIDs below FirstGenbkiObjectId are assigned in pg_proc.dat and fixed for a major version;
# functions created later by initdb (information_schema, system_functions.sql, languages) get
# OIDs from a counter and differ between clusters, so they are resolved at run time instead.
FIRST_GENBKI_OBJECT_ID = 10_000

# C entry points that run SQL built at call time (SPI) from their arguments or from catalog
# contents the statement text does not name:
#   src/backend/utils/adt/xml.c            query_to_xml*, cursor_to_xml*, schema_to_xml*,
#                                          database_to_xml* (table_to_xml* read only the table
#                                          named by their regclass argument, listed as such)
#   src/backend/utils/adt/tsquery_rewrite.c tsquery_rewrite_query: ts_rewrite(tsquery, text)
#   src/backend/utils/adt/tsvector_op.c     ts_stat1/ts_stat2: ts_stat(text [, text])
DYNAMIC_SQL_SYMBOLS = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "tsquery_rewrite_query",
        "ts_stat1",
        "ts_stat2",
    }
)

# C entry points that read or list files of the server, by prefix of the symbol:
#   src/backend/utils/adt/genfile.c     pg_read_file*, pg_read_binary_file*, pg_stat_file*,
#                                       pg_ls_dir*, pg_ls_*dir (log, WAL, tmp, archive status,
#                                       logical snapshots/mappings, replication slots)
#   src/backend/libpq/be-fsstubs.c      be_lo_import*, be_lo_export (server-side lo_import/export)
#   src/backend/utils/misc/guc.c        show_all_file_settings (view pg_file_settings)
#   src/backend/libpq/hba.c / hbafuncs.c pg_hba_file_rules, pg_ident_file_mappings
#   src/backend/utils/adt/misc.c        pg_current_logfile* (reads current_logfiles)
SERVER_FILE_SYMBOLS = (
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_",
    "be_lo_import",
    "be_lo_export",
    "show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_current_logfile",
)

REGCLASS_OID = 2205

_FUNCTIONS_SQL = """
SELECT p.oid::int, p.proname, p.prosrc, p.prolang = 12 AS internal,
       p.proargtypes::oid[]::int[], coalesce(p.proargnames, '{}'),
       NOT has_function_privilege('public', p.oid, 'EXECUTE') AS privileged,
       n.nspname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('pg_catalog', 'information_schema')
ORDER BY p.oid
"""

_VIEWS_SQL = """
SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'v' AND n.nspname IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2
"""


def section(
    server_version: str, functions: list[tuple[Any, ...]], views: list[tuple[str, str, str]]
) -> dict[str, Any]:
    """One version's section from the rows of :data:`_FUNCTIONS_SQL` and :data:`_VIEWS_SQL`."""
    from proxy.sql.extract import analyze

    names: dict[str, str] = {}
    regclass: dict[str, set[int]] = {}
    dynamic: set[str] = set()
    files: set[str] = set()
    privileged: set[str] = set()
    for oid, name, src, internal, argtypes, argnames, priv, schema in functions:
        if schema == "pg_catalog" and oid < FIRST_GENBKI_OBJECT_ID:
            names[str(oid)] = name
        for position, argtype in enumerate(argtypes or ()):
            if argtype == REGCLASS_OID:
                regclass.setdefault(name, set()).add(position)
                if position < len(argnames) and argnames[position]:
                    regclass.setdefault(f"{name}:{argnames[position]}", set()).add(position)
        if internal and src in DYNAMIC_SQL_SYMBOLS:
            dynamic.add(name)
        if internal and src.startswith(SERVER_FILE_SYMBOLS):
            files.add(name)
        if priv:
            privileged.add(name)
    # Reading a system view runs the functions in its definition: keep the views whose
    # definition (followed through the views it reads) calls a function that needs a privilege
    # PUBLIC lacks, or one classified above.
    calls: dict[str, set[str]] = {}
    reads: dict[str, set[str]] = {}
    for schema, view, definition in views:
        facts = analyze(definition)
        key = f"{schema}.{view}"
        calls[key] = {f for s in facts.statements for f in s.functions}
        reads[key] = {
            f"{r.schema or 'pg_catalog'}.{r.name}" for s in facts.statements for r in s.relations
        }
    notable = privileged | dynamic | files
    view_functions: dict[str, list[str]] = {}
    for key in calls:
        seen: set[str] = set()
        todo = [key]
        found: set[str] = set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            found |= {f.rsplit(".", 1)[-1] for f in calls.get(current, ())}
            todo.extend(r for r in reads.get(current, ()) if r in calls)
        hits = sorted(found & notable)
        if hits:
            view_functions[key] = hits
    return {
        "server_version": server_version,
        "functions": names,
        "regclass_arguments": {k: sorted(v) for k, v in sorted(regclass.items())},
        "dynamic_sql": sorted(dynamic),
        "server_files": sorted(files),
        "privileged": sorted(privileged),
        "view_functions": view_functions,
    }


async def read_section(dsn: str) -> tuple[int, dict[str, Any]]:
    """(major version, section) read from the server at ``dsn``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        version = str(await conn.fetchval("SHOW server_version"))
        major = int(await conn.fetchval("SHOW server_version_num")) // 10_000
        functions = [tuple(r) for r in await conn.fetch(_FUNCTIONS_SQL)]
        views = [(str(a), str(b), str(c)) for a, b, c in await conn.fetch(_VIEWS_SQL)]
    finally:
        await conn.close()
    return major, section(version.split()[0], functions, views)


def merged(existing: dict[str, Any], major: int, new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with ``new`` folded into its major version's section. Minor releases only
    add catalog entries (15.20 added a binary-upgrade function), so the section is the union
    over the minors it was generated from, and the highest minor is recorded."""
    versions = dict(existing.get("versions", {}))
    old = versions.get(str(major))
    versions[str(major)] = new if old is None else _union_section(old, new)
    return {
        "generated_by": "python3 -m proxy.sql.catalog.generate DSN",
        "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
    }


def _minor_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _union_section(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if key == "server_version":
            out[key] = max(value, before or value, key=_minor_key)
        elif isinstance(value, dict) and key == "functions":
            both = {**(before or {}), **value}
            out[key] = dict(sorted(both.items(), key=lambda kv: int(kv[0])))
        elif isinstance(value, dict):
            keys = sorted(set(before or {}) | set(value))
            out[key] = {k: sorted({*(before or {}).get(k, ()), *value.get(k, ())}) for k in keys}
        else:
            out[key] = sorted({*(before or ()), *value})
    return out


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="libpq URL of a server with a fresh catalog")
    parser.add_argument("--output", type=Path, default=DATA_FILE)
    args = parser.parse_args(argv)
    existing = json.loads(args.output.read_text()) if args.output.exists() else {}
    major, new = asyncio.run(read_section(args.dsn))
    args.output.write_text(dumps(merged(existing, major, new)), encoding="utf-8")
    print(f"{args.output}: PostgreSQL {new['server_version']}, {len(new['functions'])} functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())

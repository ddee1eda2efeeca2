"""The shipped catalog data (proxy/sql/catalog/builtins.json) against a real server, and the
readers built on it (built-in OIDs, regclass strings)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.sql import catalog
from proxy.sql.catalog import generate
from proxy.sql.regclass import relation_of, split_qualified_name


def test_shipped_section_matches_the_test_server(pg: Any) -> None:
    """Regenerate the running server's section: folding it into the shipped file must change
    nothing but the recorded minor version (minor releases may add entries the shipped section
    already has from a later minor, never change one). On a failure, run the generator (its
    command is in the message) and commit the result."""
    major, fresh = asyncio.run(generate.read_section(pg.dsn()))
    data = generate.json.loads(generate.DATA_FILE.read_text())
    shipped = data["versions"].get(str(major))
    hint = f"run: python3 -m proxy.sql.catalog.generate {pg.dsn()}"
    assert shipped is not None, f"no section for PostgreSQL {major} shipped; {hint}"
    folded = generate.merged(data, major, fresh)["versions"][str(major)]
    for key in fresh:
        if key != "server_version":
            assert folded[key] == shipped[key], f"{key} differs from PostgreSQL {major}; {hint}"


def test_large_object_and_file_oids_are_named() -> None:
    expected = {
        952: "lo_open", 953: "lo_close", 954: "loread", 955: "lowrite", 957: "lo_creat",
        715: "lo_create", 956: "lo_lseek", 958: "lo_tell", 1004: "lo_truncate",
        3170: "lo_lseek64", 3171: "lo_tell64", 3172: "lo_truncate64", 964: "lo_unlink",
        764: "lo_import", 765: "lo_export", 2624: "pg_read_file", 2078: "set_config",
    }  # fmt: skip
    for major in (None, *catalog.SHIPPED_VERSIONS):
        assert {oid: catalog.builtin_function_name(oid, major) for oid in expected} == expected
    assert catalog.builtin_function_name(16_384) is None  # user objects are never guessed
    assert catalog.builtin_function_name(13_561) is None  # initdb-assigned: varies by cluster


def test_classification_lists() -> None:
    dynamic = (
        "ts_rewrite",
        "ts_stat",
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "schema_to_xml",
        "database_to_xml",
    )
    for name in dynamic:
        assert name in catalog.DYNAMIC_SQL_FUNCTIONS
    assert "table_to_xml" not in catalog.DYNAMIC_SQL_FUNCTIONS  # reads its regclass argument
    files = (
        "pg_read_file",
        "pg_ls_dir",
        "pg_ls_logicalsnapdir",
        "lo_import",
        "lo_export",
        "pg_show_all_file_settings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
    )
    for name in files:
        assert name in catalog.SERVER_FILE_FUNCTIONS
    views = catalog.VIEW_FUNCTIONS
    assert views[("pg_catalog", "pg_file_settings")] == {"pg_show_all_file_settings"}
    assert views[("pg_catalog", "pg_hba_file_rules")] == {"pg_hba_file_rules"}
    assert views[("pg_catalog", "pg_ident_file_mappings")] == {"pg_ident_file_mappings"}
    assert catalog.REGCLASS_ARGUMENTS["nextval"] == {0}


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("seq1", ["seq1"]),
        ("Public.Seq1", ["public", "seq1"]),
        (' s . "My ""T"" x" ', ["s", 'My "T" x']),
        ('"A.B"', ["A.B"]),
        ("db.s.t", ["db", "s", "t"]),
        ("x" * 70, ["x" * 63]),
        ("", None),
        ("a..b", None),
        ('"', None),
        ('""', None),
        ('"a"b', None),
        ("a b", None),
    ],
)
def test_split_qualified_name_reads_like_regclassin(text: str, parts: list[str] | None) -> None:
    assert split_qualified_name(text) == parts


def test_split_qualified_name_agrees_with_the_server(pg: Any) -> None:
    import psycopg

    texts = ["seq1", "Public.Seq1", ' s . "My ""T"" x" ', '"A.B"', "a..b", '"a"b', "é" * 40]
    with psycopg.connect(pg.dsn()) as conn:
        for text in texts:
            try:
                row = conn.execute("SELECT parse_ident(%s, true)", (text,)).fetchone()
                server: list[str] | None = list(row[0]) if row else None
            except psycopg.Error:
                server = None
                conn.rollback()
            ours = split_qualified_name(text)
            # parse_ident does not truncate; compare the truncated form for long names
            if server is not None:
                server = [p.encode()[:63].decode("utf-8", "ignore") for p in server]
            assert ours == server, text


def test_relation_of() -> None:
    assert relation_of("s.t") == ("s", "t")
    assert relation_of("db.s.t") == ("s", "t")
    assert relation_of(" 16384 ") is None
    assert relation_of("a.b.c.d") is None

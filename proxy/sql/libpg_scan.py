"""ctypes binding to libpg_query's scanner inside pglast's extension module.

pglast links libpg_query statically and exports its symbols; ``pg_query_scan_tokens`` returns
a C array of ``PgQueryScanToken`` records (``int start, end, token, keyword_kind``; offsets in
UTF-8 bytes, ``end`` exclusive), which pglast's own ``scan`` turns into ``Token`` objects. Kept
apart from :mod:`proxy.sql.scanner` because mypyc cannot compile ctypes structures.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

from pglast import parser as _pg_parser

RECORD_SIZE = struct.calcsize("=iiii")


class _ScanTokensResult(ctypes.Structure):
    _fields_ = (
        ("tokens", ctypes.c_void_p),
        ("n_tokens", ctypes.c_int),
        ("error", ctypes.c_void_p),
    )


def _bind() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    lib = ctypes.CDLL(_pg_parser.__file__)
    scan = lib.pg_query_scan_tokens
    scan.argtypes = (ctypes.c_char_p,)
    scan.restype = _ScanTokensResult
    free = lib.pg_query_free_scan_tokens_result
    free.argtypes = (_ScanTokensResult,)
    free.restype = None
    name = lib.pg_query_token_name
    name.argtypes = (ctypes.c_int,)
    name.restype = ctypes.c_char_p
    return scan, free, name


_scan_tokens, _free_result, _token_name = _bind()


def token_kinds(wanted: frozenset[str] | set[str]) -> dict[str, int]:
    """Token kind numbers by name, read from libpg_query (they change between versions)."""
    found: dict[str, int] = {}
    for value in range(2048):
        raw = _token_name(value)
        if raw is not None and raw.decode("ascii") in wanted:
            found[raw.decode("ascii")] = value
    if set(found) != wanted:
        raise ImportError(f"libpg_query lacks scanner tokens {sorted(wanted - set(found))}")
    return found


def scan_records(utf8: bytes) -> bytes:
    """The token records of ``utf8`` (which must hold no NUL) as one bytes object; empty
    when the scanner reports an error (or there is no token)."""
    result = _scan_tokens(utf8)
    try:
        if result.error or result.n_tokens <= 0:
            return b""
        return ctypes.string_at(result.tokens, result.n_tokens * RECORD_SIZE)
    finally:
        _free_result(result)

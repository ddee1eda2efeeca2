"""The hot modules mypyc compiles, in one place.

``setup.py`` reads :data:`HOT_MODULES` (as text, without importing pgwarden) to decide what to
compile; ``pgwarden --version`` and the ``pgwarden_build_info`` metric use
:func:`build_kind` to say which build runs. To compile another module, add it here: it must
type-check under mypy --strict and avoid what mypyc does not support (see docs/compiled.md).
"""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES

HOT_MODULES: tuple[str, ...] = (
    "proxy.wire.constants",
    "proxy.wire.framing",
    "proxy.wire.messages",
    "proxy.wire.startup",
    "proxy.sql.scanner",
    "proxy.sql.cache",
    # The relay's pieces (a relayed transaction: 344k -> 264k instructions, docs/benchmarks.md).
    "proxy.wire.backend",
    "proxy.relay.core",
    "proxy.relay.replies",
    "proxy.relay.statement",
    "proxy.relay.holdback",
    "proxy.relay.flow",
    "proxy.relay.settings",
    "proxy.relay.enforce",
    "proxy.relay.prepared",
    "proxy.relay.transactions",
    "proxy.audit.events",
    # The lean query record and the trail's submit/flush/write (a relayed extended-protocol
    # transaction: 130,300 -> 123,000 instructions with the trail compiled, docs/benchmarks.md).
    "proxy.audit.record",
    "proxy.audit.textcap",
    "proxy.audit.trail",
    # The session's asyncio adapter and what it calls for every statement (a repeated
    # statement in-process: 21.2 -> 20.9 µs, a new literal 48.8 -> 44.3, docs/benchmarks.md).
    "proxy.session.sides",
    "proxy.session.adapter",
    "proxy.gate",
    "proxy.sql.redact",
)
# Not proxy.audit.chain: sealing is orjson and hashlib calls; compiled, an event cost 52,300
# instructions against 48,100 as Python (docs/benchmarks.md), so it stays pure.
# Not proxy.audit.jsonl: it reads trail files (review tools, not the relay), and its
# ``iter_raw_lines`` generator holds an open file: a compiled generator dropped before its end
# never runs its ``with`` exit, so the file would stay open until the process ends.


def compiled_modules() -> tuple[str, ...]:
    """The hot modules that load from a compiled extension rather than from source."""
    found: list[str] = []
    for name in HOT_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return tuple(found)


def build_kind() -> str:
    """``compiled with mypyc``, ``pure Python``, or ``partly compiled: N of M hot modules``."""
    count = len(compiled_modules())
    if count == len(HOT_MODULES):
        return "compiled with mypyc"
    if count == 0:
        return "pure Python"
    return f"partly compiled: {count} of {len(HOT_MODULES)} hot modules"

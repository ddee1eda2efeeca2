"""The tamper-evident JSONL audit trail: writer, hash chain, readers, filters and verification.

* :mod:`proxy.audit.trail` -- :class:`AuditTrail`, the batching writer the session submits to;
* :mod:`proxy.audit.chain` -- canonical serialization and the SHA-256 / HMAC hash chain;
* :mod:`proxy.audit.jsonl` -- file names, rotation order and opening (plain or gzip);
* :mod:`proxy.audit.reader` -- streaming readers (``iter_events``, ``iter_lines``, ``follow``);
* :mod:`proxy.audit.filters` -- :class:`EventFilter`, the flags shared by logs/report/replay;
* :mod:`proxy.audit.verify` -- chain verification behind ``pgwarden verify``.
"""

"""The analysis worker process: ``python -m proxy.sql.worker MEMORY_LIMIT_BYTES``.

Started by :mod:`proxy.sql.pool`. Reads requests on stdin and writes answers on stdout, one
at a time, each a frame: a 4-byte big-endian length, then that many bytes.

* request: frame 1 is JSON ``{"standard_conforming_strings": bool, "client_encoding": str,
  "text_mode": str, "statement_max": int}`` (the last two: how audit records keep a statement's
  text, made here for long statements, proxy.sql.recordtext), frame 2 the statement text
  (UTF-8, already decoded by the proxy);
* answer: JSON ``{"facts": <proxy.sql.transfer encoding>}`` or ``{"memory": true}`` when the
  analysis reached the memory limit, after which the worker exits (its heap is spent; the
  pool starts a fresh one).

The address space is limited with RLIMIT_AS before the first request, so an analysis that
would need more fails its allocation instead of taking the machine's memory. Whether it hit
the limit is read from the peak virtual size, not from how the failure surfaced (a
MemoryError inside pglast's JSON decoding, a "cannot analyse" result, an out-of-memory
parse error from libpg_query): all mean the facts cannot be trusted. Often the process does
not get that far: pglast/libpg_query segfault on some failed allocations, and the pool reads
the SIGSEGV (see proxy.sql.pool).
"""

from __future__ import annotations

import os
import resource
import struct
import sys
from typing import BinaryIO

import orjson

from proxy.sql import extract, recordtext, transfer
from proxy.sql.facts import ParserSettings

# Peak address space this close to the limit counts as "hit the limit": an allocation that
# failed may have been larger than what was left, so the peak can stay a little below it.
_LIMIT_MARGIN = 64 * 1024**2
EXIT_MEMORY = 3  # exit status when even the "memory" answer could not be written


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack("!I", header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return data


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(struct.pack("!I", len(data)) + data)
    stream.flush()


def peak_address_space() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmPeak:"):
                return int(line.split()[1]) * 1024
    return 0


def serve(limit: int, stdin: BinaryIO, stdout: BinaryIO) -> None:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        header = read_frame(stdin)
        payload = read_frame(stdin)
        if header is None or payload is None:
            return  # the pool closed our stdin: shut down
        try:
            request = orjson.loads(header)
            settings = ParserSettings(
                bool(request["standard_conforming_strings"]), str(request["client_encoding"])
            )
            text = payload.decode("utf-8")
            facts = extract.analyze(text, settings)
            facts = recordtext.attach(
                facts, str(request.get("text_mode", "none")), int(request.get("statement_max", 0))
            )
            hit = limit > 0 and peak_address_space() >= limit - _LIMIT_MARGIN
            answer = (
                b'{"memory":true}' if hit else orjson.dumps({"facts": transfer.encode(facts, text)})
            )
        except MemoryError:
            hit, answer = True, b'{"memory":true}'
        write_frame(stdout, answer)
        if hit:
            return


def main(argv: list[str]) -> int:
    limit = int(argv[0]) if argv else 0
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Nothing else may write to the answer channel.
    sys.stdout = sys.stderr
    try:
        serve(limit, stdin, stdout)
    except MemoryError:
        os._exit(EXIT_MEMORY)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

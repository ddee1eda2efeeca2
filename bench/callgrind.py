"""Instructions per call of a ``--calls N`` script, counted by valgrind's callgrind.

    python bench/callgrind.py --calls 2000 -- python bench/count_facts.py literal-pgbench

runs the command under ``valgrind --tool=callgrind`` twice, with ``--calls 0`` and with
``--calls N`` appended, and prints (Ir(N) - Ir(0)) / N: the instructions one call costs, start-up
and set-up excluded. Instruction counts do not depend on what else runs on the machine, so this
is the measurement to use where timings cannot be trusted (they are not CPU time: a cache miss
costs more than an add). Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(command: list[str]) -> int:
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            *command,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"callgrind run failed ({proc.returncode}): {' '.join(command)}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command[:1] in (["python"], ["python3"]):
        # this interpreter itself: a launcher script (pyenv's shim) would be measured instead
        command = [sys.executable, *command[1:]]
    if not command or args.calls <= 0:
        ap.error("give --calls N (N > 0) and a command after --")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian: apt-get install valgrind)")
    base = instructions([*command, "--calls", "0"])
    full = instructions([*command, "--calls", str(args.calls)])
    per_call = (full - base) / args.calls
    print(f"{per_call:12.0f} instructions/call  ({' '.join(command)}; {args.calls} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

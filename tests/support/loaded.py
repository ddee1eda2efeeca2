"""``pgwarden serve`` as users run it, able to say which modules it has imported.

The launcher is ``python -m proxy`` plus a SIGUSR1 handler that writes ``sys.modules`` to a
file, so a test sees what the real server process holds after real traffic, not a mock.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from tests.support.pgcluster import PgServer
from tests.support.proxyproc import ProxyProcess

_LAUNCHER = """\
import signal
import sys
from pathlib import Path

out = Path(sys.argv.pop(1))


def dump(signum, frame):
    part = out.with_suffix(".part")
    part.write_text("\\n".join(sorted(sys.modules)) + "\\n")
    part.replace(out)


signal.signal(signal.SIGUSR1, dump)
from proxy.cli import main

sys.exit(main(sys.argv[1:]))
"""


class LoadedProxy(ProxyProcess):
    """A :class:`ProxyProcess` whose :meth:`modules` lists what the process imported."""

    def argv(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        launcher = self.workdir / "launch.py"
        launcher.write_text(_LAUNCHER)
        argv = super().argv()
        assert argv[1:3] == ["-m", "proxy"], argv
        return [sys.executable, str(launcher), str(self._modules_file), *argv[3:]]

    @property
    def _modules_file(self) -> Path:
        return self.workdir / "modules.txt"

    def modules(self, timeout: float = 10.0) -> set[str]:
        path = self._modules_file
        path.unlink(missing_ok=True)
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline or self.returncode is not None:
                raise AssertionError(f"no module list from the proxy:\n{self.stderr_text()}")
            time.sleep(0.02)  # polling interval, not synchronization
        return set(path.read_text().split())


def start_loaded(
    pg: PgServer,
    workdir: Path,
    *extra_args: str,
    policies: Iterable[str | os.PathLike[str]] = (),
) -> LoadedProxy:
    proxy = LoadedProxy(pg, workdir, extra_args, policies)
    proxy.start()
    return proxy


def imported(modules: set[str], packages: Iterable[str]) -> list[str]:
    """The ``modules`` that are one of ``packages`` or inside one of them."""
    wanted = tuple(packages)
    return sorted(m for m in modules if m in wanted or m.startswith(tuple(p + "." for p in wanted)))

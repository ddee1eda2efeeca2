"""What operators deploy with: the systemd unit under contrib/ is valid and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "contrib" / "systemd" / "pgwarden.service"

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)


def _local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this interpreter (verify checks the program)."""
    text = UNIT.read_text().replace("/usr/local/bin/pgwarden", f"{sys.executable} -m proxy")
    copy = tmp_path / "pgwarden.service"
    copy.write_text(text)
    return copy


@needs_systemd
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(_local_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr


@needs_systemd
def test_the_unit_is_hardened(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_local_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0  # systemd calls up to 2.0 "OK"; 1.4 when written


def test_the_unit_uses_readiness_reload_and_a_checked_config() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStartPre=/usr/local/bin/pgwarden serve --config /etc/pgwarden/pgwarden.yaml"
        " --check-config",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in text.splitlines(), line

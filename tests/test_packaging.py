"""The wheel carries what an installed pgwarden needs at run time, not only the code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_policies_and_report_template(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("pgwarden-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "proxy/policies/default.yaml",
        "proxy/policies/alerts/default.yaml",
        "proxy/review/templates/report.html",
        "proxy/py.typed",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    assert any(n.endswith("entry_points.txt") for n in names)

"""The wheel carries what an installed pgwarden needs at run time, not only the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a wheel carries does not depend on compiling the hot modules; skip mypyc's 20 s here.
PURE = {**os.environ, "PGWARDEN_BUILD": "pure"}


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
        env=PURE,
    )
    (wheel,) = tmp_path.glob("pgwarden-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "proxy/policies/default.yaml",
        "proxy/policies/alerts/default.yaml",
        "proxy/review/templates/report.html",
        "proxy/console/templates/base.html",
        "proxy/console/templates/review.html",
        "proxy/console/static/console.css",
        "proxy/py.typed",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    assert any(n.endswith("entry_points.txt") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: jinja2" in requires  # the console cannot render without it


def _builder_inputs() -> list[str]:
    """What the Dockerfile's builder stage copies (`COPY a b ./` and `COPY dir ./dir`)."""
    text = (ROOT / "Dockerfile").read_text()
    builder = text.split("FROM ", 2)[1]
    out: list[str] = []
    for line in builder.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            out += line.split()[1:-1]
    return out


def test_the_image_builder_stage_gets_a_wheel_with_the_policies(tmp_path: Path) -> None:
    """The builder copies only some files; the wheel built from them must still carry the
    shipped policies (a symlinked proxy/policies used to dangle there)."""
    inputs = _builder_inputs()
    assert {"proxy", "policies", "setup.py", "pyproject.toml"} <= set(inputs)
    src = tmp_path / "src"
    src.mkdir()
    for name in inputs:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
        check=True, timeout=300, env=PURE,
    )  # fmt: skip
    (wheel,) = out.glob("pgwarden-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"proxy/policies/{p.relative_to(ROOT / 'policies')}"
        for p in (ROOT / "policies").rglob("*.yaml")
    }
    assert shipped and shipped <= names
    assert not (ROOT / "proxy" / "policies").is_symlink()

"""Build hooks (everything else is in pyproject.toml).

1. The top-level ``policies/`` directory, where the shipped policies are written and tested,
   goes into the package as ``proxy/policies`` so an installed pgwarden (a wheel, the container
   image) has them as package data.
2. The hot modules listed in ``proxy/compiled.py`` are compiled with mypyc when a C compiler
   and the Python headers are present; otherwise the build is pure Python and says why (in the
   build output, and ``pgwarden --version`` names the build that runs). ``PGWARDEN_BUILD``:
   ``auto`` (default), ``compiled`` (fail rather than fall back) or ``pure``. An editable
   install stays pure under ``auto`` (compiled modules next to the sources would shadow edits
   to them); compile one in place with ``PGWARDEN_BUILD=compiled python setup.py build_ext
   --inplace``. See docs/compiled.md.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODES = ("auto", "compiled", "pure")
# mypyc type-checks what it compiles; in an isolated build the run-time dependencies (and
# their stubs) are absent, so their types are Any there and strictness about Any is relaxed.
MYPYC_FLAGS = [
    "--ignore-missing-imports",
    "--no-warn-unused-ignores",
    "--no-warn-return-any",
    "--allow-subclassing-any",
    "--allow-untyped-decorators",
]


class BuildPyWithPolicies(build_py):
    def run(self) -> None:
        # build/ outlives a build: compiled modules left by an earlier one (another module
        # list, or a compiled build before a pure one) must not reach this wheel.
        for stale in Path(self.build_lib).rglob("*.so"):
            stale.unlink()
        super().run()
        source = ROOT / "policies"
        target = Path(self.build_lib) / "proxy" / "policies"
        shutil.copytree(source, target, dirs_exist_ok=True)


def hot_modules() -> list[str]:
    """HOT_MODULES from proxy/compiled.py, read without importing pgwarden."""
    tree = ast.parse((ROOT / "proxy" / "compiled.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == "HOT_MODULES" and node.value:
            return list(ast.literal_eval(node.value))
    raise SystemExit("proxy/compiled.py defines no HOT_MODULES")


def _compiler_found() -> bool:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    return bool(words) and shutil.which(words[0]) is not None


def why_pure(mode: str) -> str | None:
    """Why this build cannot (or must not) compile; None when it compiles."""
    if mode == "pure":
        return "PGWARDEN_BUILD=pure"
    if mode == "auto" and "editable_wheel" in sys.argv:
        return (
            "editable install (to compile in place: "
            "PGWARDEN_BUILD=compiled python setup.py build_ext --inplace)"
        )
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (pip install mypy)"
    if not _compiler_found():
        return "no C compiler found (Debian: apt-get install gcc)"
    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").exists():
        return f"no Python headers in {include} (Debian: apt-get install python3-dev)"
    return None


def ext_modules() -> list[Any]:
    mode = os.environ.get("PGWARDEN_BUILD", "auto")
    if mode not in MODES:
        raise SystemExit(f"PGWARDEN_BUILD must be one of {', '.join(MODES)}, not {mode!r}")
    reason = why_pure(mode)
    if reason is not None:
        if mode == "compiled":
            raise SystemExit(f"pgwarden: PGWARDEN_BUILD=compiled, but {reason}")
        print(f"pgwarden: building pure Python, not compiled: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in hot_modules()]
    print(f"pgwarden: compiling {len(paths)} hot modules with mypyc", file=sys.stderr)
    return list(mypycify([*MYPYC_FLAGS, *paths], opt_level="3", group_name="proxy.hot"))


os.chdir(ROOT)  # mypyc names modules by their paths relative to the working directory
setup(cmdclass={"build_py": BuildPyWithPolicies}, ext_modules=ext_modules())

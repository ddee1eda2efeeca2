"""The compiled build: one list of hot modules, and the suite knows which build it runs.

``.ci/run`` sets ``PGWARDEN_EXPECT_BUILD`` (``pure`` for the fast pure-Python pass,
``compiled`` for the full suite after ``setup.py build_ext --inplace``), so a build step that
silently fell back to pure Python fails the run instead of testing the wrong thing.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.compiled import HOT_MODULES, build_kind, compiled_modules

ROOT = Path(__file__).resolve().parents[1]


def _setup_hot_modules() -> list[str]:
    """What setup.py compiles: it reads HOT_MODULES from proxy/compiled.py as text."""
    code = (ROOT / "setup.py").read_text(encoding="utf-8")
    tree = ast.parse(code)
    (fn,) = (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "hot_modules")
    namespace: dict[str, object] = {"ROOT": ROOT}
    exec(  # the function alone, without running setup()
        compile(ast.Module([*_imports(tree), fn], type_ignores=[]), "setup.py", "exec"),
        namespace,
    )
    hot = namespace["hot_modules"]
    assert callable(hot)
    result = hot()
    assert isinstance(result, list)
    return result


def _imports(tree: ast.Module) -> list[ast.stmt]:
    return [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]


def test_setup_compiles_exactly_the_listed_modules() -> None:
    assert _setup_hot_modules() == list(HOT_MODULES)
    for name in HOT_MODULES:
        assert (ROOT / Path(*name.split("."))).with_suffix(".py").is_file(), name


def test_build_kind_matches_what_is_loaded() -> None:
    loaded = compiled_modules()
    kind = build_kind()
    if not loaded:
        assert kind == "pure Python"
    elif len(loaded) == len(HOT_MODULES):
        assert kind == "compiled with mypyc"
        # the compiled code is what runs: the module object is an extension module
        import proxy.sql.cache

        assert not proxy.sql.cache.__file__.endswith(".py")
    else:
        assert kind.startswith("partly compiled")


def test_the_build_under_test_is_the_expected_one() -> None:
    expected = os.environ.get("PGWARDEN_EXPECT_BUILD")
    if expected is None:
        pytest.skip("PGWARDEN_EXPECT_BUILD not set (.ci/run sets it)")
    want = {"pure": "pure Python", "compiled": "compiled with mypyc"}[expected]
    assert build_kind() == want


def test_version_names_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert f"({build_kind()}, Python " in done.stdout

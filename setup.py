"""Build hook (everything else is in pyproject.toml): the top-level ``policies/`` directory,
where the shipped policies are written and tested, goes into the package as ``proxy/policies``
so an installed pgwarden (a wheel, the container image) has them as package data."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPolicies(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "policies"
        target = Path(self.build_lib) / "proxy" / "policies"
        shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithPolicies})

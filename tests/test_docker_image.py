"""The container image, where a Docker engine answers: it builds, carries the policies as
package data, checks its configuration, and its health check passes with the admin API on
and off."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import pgrun

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pgrun.docker_available(), reason="no Docker engine answers here"),
]


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    tag = f"pgwarden-test:{uuid.uuid4().hex[:8]}"
    built = docker("build", "-t", tag, str(ROOT), timeout=900)
    assert built.returncode == 0, built.stderr[-4000:]
    yield tag
    docker("image", "rm", "-f", tag)


def test_the_image_carries_the_policies_and_checks_its_config(image: str) -> None:
    found = docker("run", "--rm", "--entrypoint", "python", image, "-c",
                   "from importlib import resources; print(resources.files('proxy')"
                   ".joinpath('policies', 'default.yaml').is_file())")  # fmt: skip
    assert found.stdout.strip() == "True", found.stderr
    checked = docker("run", "--rm", image, "--policy", "/usr/share/pgwarden/policies/default.yaml",
                     "--check-config")  # fmt: skip
    assert checked.returncode == 0 and "configuration ok" in checked.stderr, checked.stderr


@pytest.mark.parametrize("admin", ["127.0.0.1:9187", "127.0.0.1:9999", ""])
def test_the_health_check_follows_the_admin_listener(image: str, admin: str) -> None:
    name = f"pgwarden-health-{uuid.uuid4().hex[:8]}"
    started = docker("run", "-d", "--name", name, "-e", f"PGWARDEN_ADMIN_LISTEN={admin}", image)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = docker("exec", name, "python", "-m", "proxy.healthcheck")
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert probe.returncode == 0, probe.stderr + docker("logs", name).stderr
    finally:
        docker("rm", "-f", name)

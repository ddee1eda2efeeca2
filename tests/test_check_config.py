"""``pgwarden serve --check-config`` fails exactly when ``serve`` would not start, one line per
problem; unknown keys and ``PGWARDEN_*`` variables get "did you mean"."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy import config
from proxy.errors import ConfigError

TOKEN = "a-token-long-enough-for-pgwarden"


def pgwarden(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> tuple[
    int, str, str
]:  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def base(tmp: Path) -> list[str]:
    return [
        *("--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
        *("--audit-dir", str(tmp / "audit"), "--upstream", "127.0.0.1:1"),
    ]


def _file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


# Each case: extra flags for a config that `serve` cannot start with, and what the line says.
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "audit dir is a file": (
        lambda t: ["--audit-dir", _file(t, "plain", "x")],
        "exists and is not a directory",
    ),
    "audit dir cannot be created": (
        lambda t: ["--audit-dir", str(Path(_file(t, "plain", "x")) / "audit")],
        "does not exist and cannot be created",
    ),
    "missing hmac key": (
        lambda t: ["--audit-hmac-key-file", str(t / "nokey")],
        "cannot read audit.hmac_key_file",
    ),
    "empty hmac key": (
        lambda t: ["--audit-hmac-key-file", _file(t, "key", "  \n")],
        "is empty",
    ),
    "missing admin token file": (
        lambda t: ["--admin-token-file", str(t / "notoken")],
        "cannot read admin token",
    ),
    "short admin token": (
        lambda t: ["--admin-token-file", _file(t, "token", "short\n")],
        "at least 16 characters",
    ),
    "open admin API off loopback": (
        lambda t: ["--admin-listen", "0.0.0.0:0"],
        "needs admin.token_file",
    ),
    "listen address not on this host": (
        lambda t: ["--listen", "192.0.2.1:6432"],  # TEST-NET-1: never a local address
        "cannot listen on 192.0.2.1:6432",
    ),
    "store dsn is not a URI": (
        lambda t: ["--audit-sinks", '[{type: postgres, dsn: "host=db dbname=audit"}]'],
        "the store dsn must be a URI",
    ),
    "store dsn with a bad port": (
        lambda t: ["--audit-sinks", '[{type: postgres, dsn: "postgresql://db:port/x"}]'],
        "invalid port 'port'",
    ),
    "bad policy file": (
        lambda t: [
            "--policy",
            _file(t, "p.yaml", "version: 1\nrules:\n  - id: x\n    action: deny\n"),
        ],
        "p.yaml:4:5",
    ),
    "missing alert rules": (
        lambda t: ["--alerts", str(t / "alerts.yaml")],
        "alerts.yaml",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_fails_where_serve_fails(case: str, tmp_path: Path) -> None:
    extra, says = CASES[case]
    args = [*base(tmp_path), *extra(tmp_path)]
    code, _out, err = pgwarden("serve", *args, "--check-config")
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    # The same configuration really stops `serve` (it would otherwise run until the timeout).
    code, _out, err = pgwarden("serve", *args, timeout=60)
    assert code == 2, err


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    args = base(tmp_path)
    for extra, _says in CASES.values():
        args += extra(tmp_path)
    args += ["--audit-hmac-key-file", str(tmp_path / "nokey"), "--policy", str(tmp_path / "p")]
    code, _out, err = pgwarden("serve", *args, "--check-config")
    assert code == 2
    assert len(err.splitlines()) >= 6 and all(
        line.startswith("pgwarden: ") for line in err.splitlines()
    )


def test_ok_only_when_serve_starts(tmp_path: Path) -> None:
    token = _file(tmp_path, "token", TOKEN + "\n")
    key = _file(tmp_path, "key", "k" * 32)
    args = [*base(tmp_path), "--admin-token-file", token, "--audit-hmac-key-file", key]
    code, out, err = pgwarden("serve", *args, "--check-config")
    assert code == 0 and err.strip() == "configuration ok"
    assert "audit.hmac_key_file: " + key in out
    assert not (tmp_path / "audit").exists()  # the check creates nothing


def test_a_port_in_use_is_a_warning(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [*base(tmp_path), "--listen", f"127.0.0.1:{port}"]
        code, _out, err = pgwarden("serve", *args, "--check-config")
    assert code == 0
    assert f"pgwarden: warning: listen: 127.0.0.1:{port} is in use right now" in err


def test_too_many_workers_is_refused(tmp_path: Path) -> None:
    code, _out, err = pgwarden("serve", *base(tmp_path), "--workers", "65", "--check-config")
    assert code == 2 and "at most 64 workers" in err and "workers" in err


def test_more_workers_than_cores_is_a_warning(tmp_path: Path) -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    code, out, err = pgwarden("serve", *base(tmp_path), "--workers", str(cores + 1),
                              "--check-config")  # fmt: skip
    assert code == 0 and f"workers: {cores + 1}\n" in out
    assert f"pgwarden: warning: workers: {cores + 1} workers on {cores} CPU" in err


def test_unknown_keys_say_what_was_meant(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden.yaml"
    path.write_text("listn: 1\nlimits:\n  login_timout: 5s\nlogin_timeout: 4s\nfrob: 1\n")
    with pytest.raises(ConfigError) as caught:
        config.load(None, environ={}, config_file=str(path))
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:1:1: listn: unknown key; did you mean listen?",
        f"{path}:3:3: limits.login_timout: unknown key; did you mean limits.login_timeout?",
        f"{path}:4:1: login_timeout: unknown key; did you mean limits.login_timeout"
        " (login_timeout: under limits:)?",
        f"{path}:5:1: frob: unknown key",
    ]


def test_unknown_variables_are_warnings_with_a_hint(tmp_path: Path) -> None:
    cfg = config.load(
        None, environ={"PGWARDEN_AUDT_DIR": "x", "PGWARDEN_PG_BIN": "/x", "PGWARDEN_LISTEN": ":1"}
    )
    assert cfg.warnings == (
        "$PGWARDEN_AUDT_DIR matches no configuration key and is ignored;"
        " did you mean 'PGWARDEN_AUDIT_DIR'?",
    )
    env = {"PATH": "/usr/bin:/bin", "PGWARDEN_LISTN": "127.0.0.1:1"}
    code, _out, err = pgwarden("serve", *base(tmp_path), "--check-config", env=env)
    assert code == 0
    assert "pgwarden: warning: $PGWARDEN_LISTN matches no configuration key" in err

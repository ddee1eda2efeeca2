"""TLS and auth settings: every inconsistent combination is a clear error at load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from proxy import config, tls
from proxy.errors import ConfigError
from proxy.tls import settings
from proxy.tls.settings import ClientMode, UpstreamMode
from tests.support.tlspair import TestPKI


def _cfg(**changes: Any) -> config.Config:
    return config.defaults().replace(**changes)


def _problems(cfg: config.Config) -> list[str]:
    with pytest.raises(ConfigError) as err:
        settings.load(cfg)
    return [str(p) for p in err.value.problems]


def test_defaults_are_tls_off_and_passthrough() -> None:
    loaded = settings.load(config.defaults())
    assert loaded.client.mode is ClientMode.DISABLE
    assert loaded.upstream.mode is UpstreamMode.DISABLE
    holder = tls.load(config.defaults())
    assert holder.current.client is None and holder.current.upstream is None


def test_bad_mode_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        config.load(None, environ={"PGWARDEN_CLIENT_TLS_MODE": "always"})
    text = str(err.value)
    assert "client_tls.mode" in text and "verify-full" in text and "'always'" in text
    with pytest.raises(ConfigError, match=r"upstream_tls\.mode"):
        config.load(None, environ={"PGWARDEN_UPSTREAM_TLS_MODE": "allow"})


def test_client_tls_needs_cert_and_key() -> None:
    problems = _problems(_cfg(client_tls__mode="require"))
    assert any("client_tls.cert_file" in p and "needs a certificate" in p for p in problems)
    assert any("client_tls.key_file" in p for p in problems)


def test_missing_files_are_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.crt")
    problems = _problems(
        _cfg(
            client_tls__mode="verify-ca",
            client_tls__cert_file=missing,
            client_tls__key_file=missing,
            client_tls__ca_file=missing,
        )
    )
    assert len(problems) == 3
    assert all("cannot read" in p and "No such file" in p for p in problems)


def test_verify_modes_need_a_ca(pki: TestPKI) -> None:
    problems = _problems(
        _cfg(
            client_tls__mode="verify-full",
            client_tls__cert_file=str(pki.server_cert),
            client_tls__key_file=str(pki.server_key),
        )
    )
    assert problems == [
        "client_tls.ca_file: client_tls.mode verify-full checks client certificates: "
        "it needs the CA bundle they chain to"
    ]


def test_world_readable_key_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(pki.server_key.read_bytes())
    os.chmod(key, 0o644)
    problems = _problems(
        _cfg(
            client_tls__mode="require",
            client_tls__cert_file=str(pki.server_cert),
            client_tls__key_file=str(key),
        )
    )
    assert len(problems) == 1 and "group or world access (mode 0644)" in problems[0]


def test_files_with_tls_off_are_a_mistake(pki: TestPKI) -> None:
    problems = _problems(
        _cfg(client_tls__cert_file=str(pki.server_cert), upstream_tls__ca_file=str(pki.ca_file))
    )
    assert any(p.startswith("client_tls.cert_file: is set but client_tls.mode") for p in problems)
    assert any("use upstream_tls.mode: verify-full" in p for p in problems)


def test_upstream_rules() -> None:
    unix = _cfg(upstream="/var/run/postgresql", upstream_tls__mode="verify-full")
    assert any("Unix socket" in p for p in _problems(unix))
    # prefer over a Unix socket is fine: PostgreSQL answers 'N' there and we go plaintext
    settings.load(_cfg(upstream="/var/run/postgresql", upstream_tls__mode="prefer"))
    direct = _cfg(upstream_tls__mode="prefer", upstream_tls__direct="true")
    assert any("direct TLS has no plaintext fallback" in p for p in _problems(direct))
    half = _cfg(upstream_tls__mode="verify-full", upstream_tls__cert_file="/x.crt")
    assert any("needs both" in p for p in _problems(half))


def test_auth_mode_rules(pki: TestPKI, tmp_path: Path) -> None:
    tls_on = {
        "client_tls__mode": "require",
        "client_tls__cert_file": str(pki.server_cert),
        "client_tls__key_file": str(pki.server_key),
    }
    cert = _cfg(auth__mode="cert", **tls_on)
    assert any("verify-ca or verify-full" in p for p in _problems(cert))
    assert any("needs a users file" in p for p in _problems(_cfg(auth__mode="proxy")))
    stray = _cfg(auth__users_file=str(tmp_path / "users"))
    assert any("only read by proxy" in p for p in _problems(stray))
    passthrough = _cfg(auth__passfile=str(tmp_path / "pgpass"))
    assert any("only read by proxy and cert" in p for p in _problems(passthrough))


def test_auth_method_query_and_map_rules(pki: TestPKI, tmp_path: Path) -> None:
    users = str(tmp_path / "users")
    only_cleartext = _cfg(
        auth__mode="proxy", auth__users_file=users, auth__client_methods="password"
    )
    assert any("no client could log in" in p for p in _problems(only_cleartext))
    settings.load(only_cleartext.replace(auth__cleartext_without_tls=True))
    with pytest.raises(ValueError, match="expected some of scram-sha-256, md5, password"):
        config._client_methods("scram-sha-256,sha1")
    assert config._client_methods("md5, scram-sha-256,md5") == ("md5", "scram-sha-256")
    query = _cfg(auth__mode="proxy", auth__auth_user="pgbouncer")
    assert any("needs its password in auth.passfile" in p for p in _problems(query))
    settings.load(query.replace(auth__passfile=str(tmp_path / "pgpass")))  # no users file
    stray = _cfg(auth__auth_user="pgbouncer", auth__passfile=str(tmp_path / "pgpass"))
    assert any("auth.auth_user: is set but auth.mode is passthrough" in p for p in _problems(stray))
    verify = {
        "client_tls__cert_file": str(pki.server_cert),
        "client_tls__key_file": str(pki.server_key),
        "client_tls__ca_file": str(pki.ca_file),
    }
    mapped = _cfg(
        auth__mode="cert", auth__ident_file=str(tmp_path / "ident"), client_tls__mode="verify-ca"
    ).replace(**verify)
    assert any("go together" in p for p in _problems(mapped))
    settings.load(mapped.replace(auth__ident_map="ops"))
    full = mapped.replace(auth__ident_map="ops", client_tls__mode="verify-full")
    assert any("use verify-ca" in p for p in _problems(full))
    assert any(
        "only cert reads it" in p
        for p in _problems(_cfg(auth__ident_file="x", auth__ident_map="ops"))
    )


def test_check_config_reports_tls_problems(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    code = main(["serve", "--check-config", "--client-tls-mode", "require", "--admin-listen", ""])
    err = capsys.readouterr().err
    assert code == 2
    assert "pgwarden: client_tls.cert_file: client_tls.mode require needs a certificate" in err


def test_check_config_reads_the_users_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from proxy.cli import main

    users = tmp_path / "users.txt"
    users.write_text('"alice" "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"\n')
    users.chmod(0o644)
    argv = ["serve", "--check-config", "--admin-listen", ""]
    code = main([*argv, "--auth-mode", "proxy", "--auth-users-file", str(users)])
    assert code == 2
    assert (
        f"accessible by other users (mode 0644); run chmod 600 {users}" in capsys.readouterr().err
    )

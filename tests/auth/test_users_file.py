"""The users file: PgBouncer's format, SCRAM only, mode checked; ``pgwarden users``."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from proxy.auth import scram, users
from proxy.auth.password import Md5Secret
from proxy.auth.scram_client import ScramClient
from proxy.auth.scram_server import ScramServer
from proxy.cli import main
from proxy.errors import ConfigError
from proxy.wire import messages as m


def _login(secret: scram.ScramSecret, password: str) -> None:
    server = ScramServer("alice", secret)
    client = ScramClient(password=password)
    challenge = server.initial_response(
        client.initial_response(m.sasl_mechanisms(server.sasl_request()[5:]))[5:]
    )
    client.final(server.final_response(client.continue_response(challenge[9:])[5:])[9:])


# md5("erin-pw" + "erin"), as PostgreSQL stores it with password_encryption=md5
MD5 = "md5" + hashlib.md5(b"erin-pwerin").hexdigest()


def test_parse_pgbouncer_format() -> None:
    secret = scram.make_secret("pw")
    text = f'# comment\n; also a comment\n\n"alice" "{secret}"\n"o""brien" "{secret}" ""\n'
    parsed = users.parse(text, "users.txt")
    assert parsed.secret("alice") == secret and parsed.secret('o"brien') == secret
    assert parsed.secret("bob") is None


def test_bad_entries_are_named_with_their_line() -> None:
    secret = scram.make_secret("pw")
    text = (
        f'"alice" "{secret}"\n'
        '"bob" "md5abcdef0123456789abcdef012345678"\n'
        '"carol" "plain-password"\n'
        f'"alice" "{secret}"\n'
        "dave secret\n"
        f'"erin" "{MD5}"\n'
    )
    with pytest.raises(ConfigError) as err:
        users.parse(text, "users.txt")
    problems = [str(p) for p in err.value.problems]
    assert problems[0].startswith("users.txt:2: auth.users_file: user 'bob': not an md5 secret")
    assert "an invalid md5 entry is not accepted" in problems[0]
    assert "users.txt:3:" in problems[1] and "plaintext or unknown entry" in problems[1]
    assert "users.txt:4:" in problems[2] and "listed twice" in problems[2]
    assert "users.txt:5:" in problems[3] and 'expected "user"' in problems[3]
    assert "users.txt:6:" in problems[4]
    assert "only accepted when auth.client_methods lists md5 or password" in problems[4]


def test_md5_entries_where_md5_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = scram.make_secret("pw")
    parsed = users.parse(f'"alice" "{secret}"\n"erin" "{MD5}"\n', "u", allow_md5=True)
    assert parsed.verifier("alice") == secret and parsed.verifier("erin") == Md5Secret(MD5)
    assert parsed.secret("erin") is None and parsed.names == ["alice", "erin"]
    path = tmp_path / "users.txt"
    path.write_text(f'"alice" "{secret}"\n')
    path.chmod(0o600)
    monkeypatch.setattr("sys.stdin", io.StringIO("erin-pw\n"))
    assert main(["users", "add", "erin", "--md5", "--password-stdin", "--file", str(path)]) == 0
    written = users.load(str(path), allow_md5=True)
    assert written.md5 == {"erin": Md5Secret(MD5)} and written.secret("alice") == secret
    capsys.readouterr()
    assert main(["users", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["alice", "erin"]


def test_mode_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text(f'"alice" "{scram.make_secret("pw")}"\n')
    os.chmod(path, 0o644)
    with pytest.raises(
        ConfigError, match=r"accessible by other users \(mode 0644\); run chmod 600"
    ):
        users.load(str(path))
    os.chmod(path, 0o640)
    assert users.load(str(path)).secret("alice") is not None


def test_users_add_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.txt"
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pässword\n"))
    assert (
        main(["users", "add", "alice", "--file", str(path), "--password-stdin", "--print-sql"]) == 0
    )
    out = capsys.readouterr()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = users.load(str(path)).secret("alice")
    assert secret is not None
    _login(secret, "s3cret pässword")
    assert out.out == f"ALTER ROLE \"alice\" PASSWORD '{secret}';\n"
    assert "added 'alice'" in out.err
    # changing the password replaces the entry and keeps the others
    monkeypatch.setattr("sys.stdin", io.StringIO("other\n"))
    assert main(["users", "add", "bob", "--file", str(path), "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("new\n"))
    assert main(["users", "add", "alice", "--file", str(path), "--password-stdin"]) == 0
    assert "changed the password of 'alice'" in capsys.readouterr().err
    loaded = users.load(str(path))
    assert sorted(loaded.secrets) == ["alice", "bob"]
    _login(loaded.secrets["alice"], "new")
    assert main(["users", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out == "alice\nbob\n"


def test_users_add_refuses_empty_password_and_open_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.txt"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["users", "add", "alice", "--file", str(path), "--password-stdin"]) == 2
    assert "empty password refused" in capsys.readouterr().err
    path.write_text("")
    os.chmod(path, 0o666)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["users", "add", "alice", "--file", str(path), "--password-stdin"]) == 2
    assert "accessible by other users (mode 0666)" in capsys.readouterr().err


def test_typical_iterations_feed_the_mock_exchange() -> None:
    text = "".join(
        f'"u{i}" "{scram.make_secret("pw", iterations=n)}"\n' for i, n in enumerate([8, 8, 16])
    )
    parsed = users.parse(text, "users.txt")
    assert parsed.typical_iterations == 8
    assert users.parse("", "empty").typical_iterations == scram.DEFAULT_ITERATIONS
    mock = ScramServer("nobody", None, mock_iterations=parsed.typical_iterations)
    assert mock.secret.iterations == 8

"""`pgwarden verify`: every kind of damage is detected with the right kind and location."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy import cli, config
from proxy.audit.chain import canonical, hasher
from proxy.audit.jsonl import CURRENT, trail_files
from proxy.audit.trail import AuditTrail
from proxy.audit.verify import verify_trail


@pytest.fixture
def trail_dir(tmp_path: Path) -> Path:
    """30 records over several rotated files plus the current one."""
    directory = tmp_path / "audit"
    cfg = config.defaults().replace(
        audit__dir=str(directory), audit__rotate_size="2kB", audit__fsync="none"
    )
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for n in range(1, 31):
        trail.submit(
            {
                "v": 1,
                "type": "query",
                "ts": "2026-11-26T07:40:00.000000Z",
                "user": "alice",
                "statement": f"UPDATE accounts SET balance = balance - {n} WHERE id = 7",
            }
        )
    trail.close()
    assert len(trail_files(directory)) >= 4
    return directory


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def middle_file(directory: Path) -> Path:
    return trail_files(directory)[1].path


def check(directory: Path, kind: str, file: str, line: int) -> None:
    result = verify_trail(directory)
    assert result.problem is not None, "damage not detected"
    assert (result.problem.kind, result.problem.file, result.problem.line) == (kind, file, line)


def test_intact_trail(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(trail_dir)]) == 0
    files = len(trail_files(trail_dir))
    assert capsys.readouterr().out == f"ok: 30 records, seq 1..30, files {files}\n"


def test_edited_record(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    lines[2] = lines[2].replace(b"balance - ", b"balance + ")
    path.write_bytes(b"".join(lines))
    check(trail_dir, "edited", path.name, 3)
    assert cli.main(["verify", str(trail_dir)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED: edited: {path.name}:3: ")


def test_edited_and_rehashed_record_is_found_by_the_broken_link(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    record = orjson.loads(lines[1])
    record["user"] = "mallory"
    record["hash"] = hasher(None)(canonical(record))
    lines[1] = orjson.dumps(record) + b"\n"
    path.write_bytes(b"".join(lines))
    check(trail_dir, "edited", path.name, 2)


def test_non_json_line_in_the_middle_is_an_edit(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    lines[1] = b"garbage\n"
    path.write_bytes(b"".join(lines))
    check(trail_dir, "edited", path.name, 2)


def test_deleted_record(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    check(trail_dir, "deleted", path.name, 3)


def test_deleted_from_the_start_of_a_rotated_file(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    path.write_bytes(b"".join(lines_of(path)[1:]))
    check(trail_dir, "deleted", path.name, 1)


def test_inserted_duplicate_record(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    lines.insert(2, lines[1])
    path.write_bytes(b"".join(lines))
    check(trail_dir, "inserted", path.name, 3)


def test_inserted_forged_record(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    forged = orjson.loads(lines[2])
    forged["statement"] = "SELECT 'nothing to see'"
    lines.insert(2, orjson.dumps(forged) + b"\n")
    path.write_bytes(b"".join(lines))
    check(trail_dir, "inserted", path.name, 3)


def test_reordered_records(trail_dir: Path) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    check(trail_dir, "reordered", path.name, 2)


def test_missing_rotated_file(trail_dir: Path) -> None:
    files = trail_files(trail_dir)
    files[1].path.unlink()
    check(trail_dir, "missing-file", files[2].path.name, 1)


def test_pruned_oldest_file_needs_allow_pruned(
    trail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = trail_files(trail_dir)[0]
    first.path.unlink()
    check(trail_dir, "missing-file", trail_files(trail_dir)[0].path.name, 1)
    assert cli.main(["verify", str(trail_dir), "--allow-pruned"]) == 0
    assert "ok:" in capsys.readouterr().out


def test_truncated_newest_records(trail_dir: Path) -> None:
    current = trail_dir / CURRENT
    lines = lines_of(current)
    current.write_bytes(b"".join(lines[:-2]))
    check(trail_dir, "truncated", CURRENT, len(lines) - 1)


def test_torn_last_line_is_a_warning_not_tampering(
    trail_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = trail_dir / CURRENT
    with current.open("ab") as handle:
        handle.write(b'{"application_name":null,"chain":"sha2')
    assert cli.main(["verify", str(trail_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok: 30 records")
    assert f"warning: torn: {CURRENT}:{len(lines_of(current))}" in captured.err


def test_json_output(trail_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = middle_file(trail_dir)
    lines = lines_of(path)
    del lines[0:2]
    path.write_bytes(b"".join(lines))
    assert cli.main(["verify", str(trail_dir), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["problem"]["kind"] == "deleted"
    assert report["problem"]["file"] == path.name and report["problem"]["line"] == 1


def test_missing_directory_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(tmp_path / "nope")]) == 2
    assert "no audit directory" in capsys.readouterr().err


def test_deleted_current_file_is_truncation(trail_dir: Path) -> None:
    last_rotated = trail_files(trail_dir)[-2].path
    (trail_dir / CURRENT).unlink()
    check(trail_dir, "truncated", last_rotated.name, len(lines_of(last_rotated)) + 1)


def test_a_removed_audit_head_is_damage(trail_dir: Path) -> None:
    # The writer creates audit.head at its first start, so a missing one was removed (to hide
    # records cut off the end of the newest file).
    (trail_dir / "audit.head").unlink()
    current = trail_dir / CURRENT
    current.write_bytes(b"".join(lines_of(current)[:-1]))
    result = verify_trail(trail_dir)
    assert result.problem is not None and result.problem.kind == "head"


def test_an_empty_directory_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert cli.main(["verify", str(tmp_path / "empty")]) == 2
    assert "no audit trail files" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a trail\n")
    assert cli.main(["verify", str(other)]) == 2


def test_a_key_that_matches_no_record_says_wrong_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "audit"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"the-real-key")
    cfg = config.defaults().replace(
        audit__dir=str(directory), audit__fsync="none", audit__hmac_key_file=str(key_file)
    )
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for n in range(5):
        trail.submit({"v": 1, "type": "query", "ts": "2026-11-26T07:40:00.000000Z", "n": n})
    trail.close()
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not-the-key")
    assert cli.main(["verify", str(directory), "--hmac-key-file", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "wrong key?" in err and "edited" not in err
    assert cli.main(["verify", str(directory), "--hmac-key-file", str(key_file)]) == 0
    # With the right key, one edited record is still an edit, not a wrong key.
    current = directory / CURRENT
    lines = lines_of(current)
    lines[2] = lines[2].replace(b'"n":2', b'"n":7')
    current.write_bytes(b"".join(lines))
    assert cli.main(["verify", str(directory), "--hmac-key-file", str(key_file)]) == 1
    assert "FAILED: edited: audit.jsonl:3" in capsys.readouterr().out


def test_verify_reports_its_progress_through_watch(trail_dir: Path) -> None:
    """`pgwarden verify` shows a progress bar on a terminal: verify_trail hands every record
    it reads through ``watch``."""
    seen: list[object] = []

    def watch(records):  # type: ignore[no-untyped-def]
        for record in records:
            seen.append(record)
            yield record

    result = verify_trail(trail_dir, watch=watch)
    assert result.problem is None and len(seen) == result.records > 0

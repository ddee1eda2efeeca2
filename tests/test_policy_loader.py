"""Policy loading: every problem reported at its exact file:line:col, includes, merging."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.errors import PolicyError
from proxy.policy.loader import load_policy


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(*paths: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(paths)
    return [str(p) for p in info.value.problems]


def test_valid_policy_loads_with_rule_sources(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        version: 1
        defaults:
          action: flag
          mode: monitor
        rules:
          - id: a
            when: {commands: [DELETE]}
            action: block
          - id: b
            when: {users: ["x*"]}
            action: allow
        """,
    )
    policy = load_policy([f])
    assert policy.rule_count == 2
    assert [r.source for r in policy.rules] == [f"{f}:6", f"{f}:9"]
    assert policy.defaults.action == "flag"
    assert policy.defaults.mode == "monitor"
    assert policy.files == (f,)
    assert policy.uses_time is False


def test_unknown_keys_everywhere_with_suggestion(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        version: 1
        defualts: {}
        rules:
          - id: a
            acton: block
            when:
              comands: [DELETE]
        """,
    )
    assert problems(f) == [
        f"{f}:2:1: unknown top-level key 'defualts'; did you mean 'defaults'?",
        f"{f}:4:5: rules[a]: rule has no action (allow, flag, review or block)",
        f"{f}:5:5: rules[a]: unknown rule key 'acton'; did you mean 'action'?",
        f"{f}:7:7: rules[a].when: unknown condition key 'comands'; did you mean 'commands'?",
    ]


def test_wrong_types_and_unknown_values(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        defaults:
          action: deny
          on_unparsable: allow
        rules:
          - id: a
            when:
              users: 3
              missing_where: "yes"
              classes: [read, writes]
            action: block
            severity: urgent
            sqlstate: 42501
        """,
    )
    assert problems(f) == [
        f"{f}:2:3: defaults.action: 'deny' is not one of allow, flag, block",
        f"{f}:3:3: defaults.on_unparsable: 'allow' is not one of block, flag",
        f"{f}:7:7: rules[a].when.users: expected a string or a non-empty list of strings",
        f"{f}:8:7: rules[a].when.missing_where: expected true or false, got 'yes'",
        f"{f}:9:23: rules[a].when.classes: 'writes' is not one of "
        "read, write, ddl, role, function, misc",
        f"{f}:11:5: rules[a].severity: 'urgent' is not one of low, medium, high, critical",
        f"{f}:12:5: rules[a]: sqlstate must be 5 characters 0-9/A-Z, quoted",
    ]


def test_bad_cidr_hours_regex_glob_and_identifier(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        rules:
          - id: a
            when:
              client_addrs: [10.0.0.0/8, 10.0.0.1/8, nonsense]
              hours:
                - Mon-Fri 09:00-18:00 Europe/Berlin
                - Mon-Fri 09:00-25:00
                - 09:00-17:00 Mars/Base
              sql_regex: "foo("
              users: ["ok", "bad[glob"]
              tables: ['"unterminated', "a.b.c"]
            action: block
        """,
    )
    got = problems(f)
    assert got[0].startswith(f"{f}:4:34: rules[a].when.client_addrs: bad CIDR '10.0.0.1/8': ")
    assert "has host bits set" in got[0]
    assert got[1].startswith(f"{f}:4:46: rules[a].when.client_addrs: bad CIDR 'nonsense': ")
    assert got[2:] == [
        f"{f}:7:11: rules[a].when.hours: bad hours: bad time '25:00'",
        f"{f}:8:11: rules[a].when.hours: bad hours: unknown time zone 'Mars/Base'",
        f"{f}:9:7: rules[a].when.sql_regex: bad regex 'foo(': "
        "missing ), unterminated subpattern at position 3",
        f"{f}:10:21: rules[a].when.users: bad glob 'bad[glob': '[' is never closed",
        f"{f}:11:16: rules[a].when.tables: bad table pattern '\"unterminated': "
        "unterminated quoted identifier",
        f"{f}:11:33: rules[a].when.tables: bad table pattern 'a.b.c': "
        "'a.b.c' has 3 parts; write name or schema.name",
    ]


def test_duplicate_id_names_both_places(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.yaml",
        """
        rules:
          - id: same
            action: flag
        """,
    )
    b = write(
        tmp_path / "b.yaml",
        """
        rules:
          - id: other
            action: flag
          - id: same
            action: block
        """,
    )
    assert problems(a, b) == [
        f"{b}:4:5: rules[same]: duplicate rule id 'same'; first defined at {a}:2:5",
    ]


def test_two_files_with_defaults_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "defaults: {action: allow}\n")
    b = write(tmp_path / "b.yaml", "version: 1\ndefaults: {action: block}\n")
    assert problems(a, b) == [
        f"{b}:2:1: defaults are already set at {a}:1:1; only one policy file may set defaults"
    ]


def test_include_cycle_and_missing_include(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    b = write(tmp_path / "b.yaml", "include:\n  - c.yaml\n  - a.yaml\n")
    assert problems(a) == [
        f"{b}:2:5: {tmp_path / 'c.yaml'}: no such file",
        f"{b}:3:5: include cycle: {a.resolve()} -> {b.resolve()} -> {a.resolve()}",
    ]


def test_include_directory_sorted_and_diamond_read_once(tmp_path: Path) -> None:
    main = write(
        tmp_path / "main.yaml",
        """
        defaults: {action: block}
        include: [rules.d/, shared.yaml]
        rules:
          - {id: main-rule, action: allow, when: {commands: [SELECT]}}
        """,
    )
    write(
        tmp_path / "rules.d" / "20-b.yml",
        "rules: [{id: b, action: flag}]\ninclude: ../shared.yaml\n",
    )
    write(tmp_path / "rules.d" / "10-a.yaml", "rules: [{id: a, action: flag}]\n")
    write(tmp_path / "rules.d" / "notes.txt", "not a policy")
    write(tmp_path / "shared.yaml", "rules: [{id: shared, action: flag}]\n")
    policy = load_policy([main])
    assert [r.id for r in policy.rules] == ["main-rule", "a", "b", "shared"]
    assert [p.name for p in policy.files] == ["main.yaml", "10-a.yaml", "20-b.yml", "shared.yaml"]
    assert tmp_path / "rules.d" in policy.watch_paths


def test_missing_policy_file_and_yaml_syntax_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "rules:\n  - id: a\n   action: [\n")
    got = problems(tmp_path / "absent.yaml", bad)
    assert got[0] == f"{tmp_path / 'absent.yaml'}: no such file or directory"
    assert got[1].startswith(f"{bad}:3:")


def test_notify_only_on_flag_rules_and_reserved_ids(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        rules:
          - id: unparsable
            action: flag
          - id: loud
            action: block
            notify: true
        """,
    )
    assert problems(f) == [
        f"{f}:2:5: rules[unparsable]: id 'unparsable' is reserved for pgwarden's own decisions",
        f"{f}:6:5: rules[loud]: notify applies only to flag rules",
    ]


def test_hours_rule_sets_uses_time(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        rules:
          - id: late
            when: {classes: [ddl]}
            unless: {hours: "Mon-Fri 09:00-18:00 UTC"}
            action: block
        """,
    )
    assert load_policy([f]).uses_time is True


def test_command_words_that_are_never_tags_are_refused(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        rules:
          - id: a
            when: {commands: [truncate, "DROP *", "CREATE"]}
            action: flag
        """,
    )
    assert problems(f) == [
        f"{f}:3:23: rules[a].when.commands: no statement has the command tag 'TRUNCATE'; "
        "PostgreSQL reports 'TRUNCATE TABLE'",
        f"{f}:3:43: rules[a].when.commands: no statement has the command tag 'CREATE'; "
        "PostgreSQL reports 'CREATE *'",
    ]

"""``pgwarden verify DIR``: check the audit trail's hash chain (exit 0 intact, 1 damaged, 2 bad
input: no trail, keyed records without a key, a key that matches no record)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.anchor import load_anchors
from proxy.audit.chain import load_hmac_key
from proxy.audit.trailset import trail_dirs, trail_label
from proxy.audit.verify import VerifyResult, verify_trail
from proxy.commands.options import add_format_argument
from proxy.review.progress import estimate_records, progress, wanted
from proxy.review.source import add_location_arguments, audit_dir, hmac_key_file


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check the audit trail's hash chain for edits, deletions, insertions, truncation",
        description="Verify the hash chain of an audit directory. Exit 0 when intact, 1 when "
        "a record was edited, deleted, inserted, reordered, a rotated file is missing or the "
        "trail was truncated (the first problem is named with its file and line).",
    )
    add_location_arguments(parser)
    parser.add_argument(
        "--hmac-key-file",
        metavar="FILE",
        help="key file when the trail is HMAC-chained (default: audit.hmac_key_file of the config)",
    )
    parser.add_argument(
        "--allow-pruned",
        action="store_true",
        help="accept whole oldest files removed by hand, without the pruned record that "
        "audit.retention writes (a warning, not ok-by-proof)",
    )
    parser.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SOURCE",
        help="check against chain heads published elsewhere: a file holding anchor messages "
        "(syslog, webhook receiver) or the central store's postgresql:// DSN (repeatable)",
    )
    parser.add_argument(
        "--store-schema",
        default="public",
        metavar="NAME",
        help="schema of the central store for --anchor DSN (default: public)",
    )
    add_format_argument(parser, ("text", "json"), "text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key_file = hmac_key_file(args)
    key = load_hmac_key(key_file) if key_file else None
    anchors = [a for spec in args.anchor for a in load_anchors(spec, args.store_schema)]
    directory = Path(audit_dir(args, require_trail=False))
    trails = trail_dirs(directory)
    total = estimate_records(directory, None) if wanted() else None
    results: list[tuple[Path, VerifyResult]] = []
    for trail in trails:
        # One chain per worker: each is verified on its own, all must be intact.
        results.append((trail, verify_trail(
            trail,
            key,
            allow_pruned=args.allow_pruned,
            anchors=anchors,
            watch=lambda records: progress(records, total=total, desc="verify"),
        )))  # fmt: skip
    if args.format == "json":
        body: Any = results[0][1].as_dict()
        if len(results) > 1:
            body = {
                "ok": all(r.ok for _, r in results),
                "trails": [
                    {"trail": trail_label(directory, t), "directory": str(t), **r.as_dict()}
                    for t, r in results
                ],
            }
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        for trail, result in results:
            label = f"{trail_label(directory, trail)} ({trail}): " if len(results) > 1 else ""
            for warning in result.warnings:
                print(f"warning: {label}{warning}", file=sys.stderr)
            if result.problem is None:
                print(f"{label}ok: {result.summary()}")
            else:
                print(f"{label}FAILED: {result.problem}")
                print(f"{label}verified before the problem: {result.summary()}")
    return 0 if all(r.ok for _, r in results) else 1

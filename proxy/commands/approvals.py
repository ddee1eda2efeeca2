"""``pgwarden approvals``: list, show, approve and deny held statements through the admin API,
and make personal tokens for the approvers file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from proxy.approvals.people import new_token, token_hash
from proxy.errors import PgWardenError

DEFAULT_URL = "http://127.0.0.1:9187"
TIMEOUT = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "approvals",
        help="review statements waiting for approval (list, show, approve, deny, new-token)",
        description="Talk to a running proxy's admin API about approval requests. Deciding "
        "needs your personal token (from the approvers file): --token-file, "
        "$PGWARDEN_TOKEN_FILE or $PGWARDEN_TOKEN.",
    )
    sub = parser.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--admin-url",
            default=os.environ.get("PGWARDEN_ADMIN_URL", DEFAULT_URL),
            help=f"the proxy's admin API (default $PGWARDEN_ADMIN_URL or {DEFAULT_URL})",
        )
        p.add_argument("--token-file", metavar="FILE", help="file holding your personal token")
        p.add_argument("--json", action="store_true", help="print the API's JSON")

    listing = sub.add_parser("list", help="requests, newest first (default: pending ones)")
    listing.add_argument(
        "--state",
        default="pending",
        choices=("pending", "approved", "denied", "expired", "withdrawn", "all"),
    )
    common(listing)
    listing.set_defaults(func=run_list)
    show = sub.add_parser("show", help="one request with its votes")
    show.add_argument("id")
    common(show)
    show.set_defaults(func=run_show)
    for verb in ("approve", "deny"):
        p = sub.add_parser(verb, help=f"{verb} a request (as the owner of your token)")
        p.add_argument("id")
        p.add_argument("--reason", default="", help="why (required by some rules)")
        if verb == "approve":
            p.add_argument(
                "--break-glass",
                action="store_true",
                help="force-approve as a member of a break-glass group (needs --reason)",
            )
        common(p)
        p.set_defaults(func=run_decide, verb=verb)
    token = sub.add_parser("new-token", help="make a personal token and its approvers-file entry")
    token.add_argument("name")
    token.add_argument("--groups", default="", help="comma-separated groups")
    token.add_argument("--role", choices=("approver", "viewer"), default="approver")
    token.set_defaults(func=run_new_token)
    password = sub.add_parser(
        "new-password",
        help="make the password entry (a SCRAM secret) for console login by name and password",
        description="Reads the password from the terminal (twice), or one line from stdin.",
    )
    password.add_argument("name")
    password.set_defaults(func=run_new_password)


# --- talking to the API -------------------------------------------------------------------


def _token(args: argparse.Namespace) -> str | None:
    path = args.token_file or os.environ.get("PGWARDEN_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PgWardenError(f"cannot read token file {path}: {exc}") from None
    return os.environ.get("PGWARDEN_TOKEN") or None


class ApiRefusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def call(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    url = args.admin_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    token = _token(args)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = exc.reason
        raise ApiRefusal(exc.code, str(message)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PgWardenError(f"cannot reach the admin API at {args.admin_url}: {reason}") from None


def _refused(exc: ApiRefusal) -> int:
    print(f"pgwarden: refused ({exc.status}): {exc}", file=sys.stderr)
    return 1


# --- commands -------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    query = "" if args.state == "all" else f"?state={args.state}"
    try:
        items = call(args, "GET", f"/approvals{query}")
    except ApiRefusal as exc:
        return _refused(exc)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print(
            f"no {args.state if args.state != 'all' else ''} approval requests".replace("  ", " ")
        )
        return 0
    print(f"{'ID':<22} {'STATE':<9} {'RULE':<22} {'USER':<10} {'DB':<8} {'OK':<5} STATEMENT")
    for item in items:
        ok = f"{item['approvals']}/{item['approvals_needed']}"
        statement = " ".join(str(item.get("statement") or "").split())
        print(
            f"{item['id']:<22} {item['state']:<9} {item['rule'][:22]:<22} "
            f"{item['requester'][:10]:<10} {item['database'][:8]:<8} {ok:<5} {statement[:60]}"
        )
    return 0


def describe(item: dict[str, Any]) -> str:
    lines = [
        f"request    {item['id']}  ({item['state']})",
        f"rule       {item['rule']}  {item['rule_source']}",
        f"requester  {item['requester']} on database {item['database']} "
        f"(session {item['session_id']}, {item['application_name'] or 'no application name'}, "
        f"{item['client_addr'] or 'unknown address'})",
        f"asked      {item['created_at']}, expires {item['expires_at']}",
        f"approvals  {item['approvals']} of {item['approvals_needed']}"
        + ("  BREAK-GLASS" if item["break_glass"] else ""),
        "statement",
        *("    " + line for line in str(item["statement"] or "").splitlines()),
    ]
    if item.get("params_sha256"):
        lines.append(f"parameters sha256 {item['params_sha256']}")
    for vote in item["votes"]:
        who = vote["approver"] or "pgwarden"
        reason = f": {vote['reason']}" if vote["reason"] else ""
        glass = " (break-glass)" if vote["break_glass"] else ""
        lines.append(f"vote       {vote['at']}  {who} {vote['verdict']}{glass}{reason}")
    if item.get("reason") and item["state"] != "pending":
        lines.append(f"ended      {item['decided_at']}: {item['reason']}")
    if item.get("ticket_until"):
        used = "used" if item["ticket_used"] else "not used yet"
        lines.append(f"ticket     valid until {item['ticket_until']} ({used})")
    if item.get("link"):
        lines.append(f"console    {item['link']}")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    try:
        item = call(args, "GET", f"/approvals/{args.id}")
    except ApiRefusal as exc:
        return _refused(exc)
    print(json.dumps(item, indent=2) if args.json else describe(item))
    return 0


def run_decide(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if getattr(args, "break_glass", False):
        body["break_glass"] = True
    try:
        item = call(args, "POST", f"/approvals/{args.id}/{args.verb}", body)
    except ApiRefusal as exc:
        return _refused(exc)
    if args.json:
        print(json.dumps(item, indent=2))
        return 0
    done = {"approve": "approved", "deny": "denied"}[args.verb]
    if item["state"] == "pending":
        print(
            f"{done} {item['id']}: {item['approvals']} of {item['approvals_needed']} "
            "approvals, still pending"
        )
    else:
        print(f"{done} {item['id']}: request is now {item['state']}")
    return 0


def run_new_token(args: argparse.Namespace) -> int:
    token = new_token()
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    print(f"token for {args.name} (give it to them; it is not stored anywhere): {token}")
    print("entry for the approvers file:")
    print(f"  - name: {args.name}")
    print(f"    token_sha256: {token_hash(token)}")
    if groups:
        print(f"    groups: [{', '.join(groups)}]")
    print(f"    role: {args.role}")
    return 0


def run_new_password(args: argparse.Namespace) -> int:
    from proxy.auth.scram import make_secret

    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != first:
            raise PgWardenError("the passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 12:
        raise PgWardenError("use a password of at least 12 characters")
    print(f"  - name: {args.name}")
    print(f'    password: "{make_secret(first)}"')
    return 0

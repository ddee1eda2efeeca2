"""``pgwarden users``: the SCRAM users file of ``auth.mode: proxy``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from proxy.auth import password as md5_auth
from proxy.auth import scram, users


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "users",
        help="manage the users file (SCRAM secrets) for auth.mode proxy",
        description="pgwarden keeps SCRAM-SHA-256 secrets, never passwords, in a file in "
        "PgBouncer's auth_file format. The file is created with mode 0600.",
    )
    sub = parser.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user or change its password")
    add.add_argument("name", help="the user (the name clients log in with)")
    _file_arg(add)
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (for scripts)",
    )
    add.add_argument(
        "--iterations",
        type=int,
        default=scram.DEFAULT_ITERATIONS,
        help=f"PBKDF2 iterations (default {scram.DEFAULT_ITERATIONS}, PostgreSQL's)",
    )
    add.add_argument(
        "--md5",
        action="store_true",
        help="write an md5 entry instead (for clients that only speak md5; needs md5 in "
        "auth.client_methods; whoever reads the entry can log in with it)",
    )
    add.add_argument(
        "--print-sql",
        action="store_true",
        help="print ALTER ROLE … PASSWORD '<secret>' giving the server the same secret, so "
        "pgwarden can log in upstream with the client's own proof",
    )
    add.set_defaults(func=run_add)
    listing = sub.add_parser("list", help="list the users in the file (names only)")
    _file_arg(listing)
    listing.set_defaults(func=run_list)


def _file_arg(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("PGWARDEN_AUTH_USERS_FILE")
    parser.add_argument(
        "--file",
        default=default,
        required=default is None,
        metavar="FILE",
        help="the users file (default: $PGWARDEN_AUTH_USERS_FILE, the auth.users_file key)",
    )


def _password(from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("pgwarden users add: the passwords differ", file=sys.stderr)
        return None
    return first


def run_add(args: argparse.Namespace) -> int:
    if not 1 <= args.iterations <= 10_000_000:
        print("pgwarden users add: --iterations must be between 1 and 10000000", file=sys.stderr)
        return 2
    password = _password(args.password_stdin)
    if password is None:
        return 2
    if not password:
        print("pgwarden users add: empty password refused", file=sys.stderr)
        return 2
    secret = (
        md5_auth.make_md5(password, args.name)
        if args.md5
        else scram.make_secret(password, args.iterations)
    )
    replaced = users.add(args.file, args.name, secret)
    verb = "changed the password of" if replaced else "added"
    print(f"{verb} {args.name!r} in {args.file}", file=sys.stderr)
    if args.print_sql:
        name = '"' + args.name.replace('"', '""') + '"'
        print(f"ALTER ROLE {name} PASSWORD '{secret}';")
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name in users.load(args.file, allow_md5=True).names:
        print(name)
    return 0

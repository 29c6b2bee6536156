"""`memaudit create-key | revoke-key | list-keys`: API keys stored in the database (hashed)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from typing import Any

from app.settings import get_settings

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this module's sub-commands."""
    create = subparsers.add_parser("create-key", help="create an API key for an owner (printed once)")
    create.add_argument("owner")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--expires-in", type=duration, default=None, metavar="DURATION",
                        help="the key stops working after this long: 90d, 12h, 30m, 45s (default: never)")
    create.set_defaults(func=_create_key)
    revoke = subparsers.add_parser(
        "revoke-key", help="revoke API keys at once (database keys and MEMAUDIT_API_KEYS entries)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("key", nargs="?", help="the key itself, or - to read it from stdin (keeps it out "
                                              "of the shell history)")
    which.add_argument("--id", type=int, help="the key's id (memaudit list-keys)")
    which.add_argument("--owner", help="every key of this owner")
    revoke.set_defaults(func=_revoke_key)
    listing = subparsers.add_parser("list-keys", help="list API keys: id, owner, state, expiry (no secrets)")
    listing.set_defaults(func=_list_keys)


def duration(text: str) -> dt.timedelta:
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h, 30m or 45s")
    return dt.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _create_key(args: argparse.Namespace) -> int:
    from app.db import session_scope, utcnow
    from app.services.auth import create_api_key

    expires_at = utcnow() + args.expires_in if args.expires_in is not None else None
    try:
        with session_scope() as session:
            token = create_api_key(session, args.owner, args.name, expires_at=expires_at)
    except ValueError as error:
        print(f"memaudit: {error}", file=sys.stderr)
        return 2
    print(token)
    if expires_at is not None:
        print(f"expires at {expires_at.isoformat(timespec='seconds')}", file=sys.stderr)
    return 0


def _revoke_key(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.services import auth
    from app.services.errors import NotFound

    settings = get_settings()
    try:
        with session_scope() as session:
            if args.owner is not None:
                count = auth.revoke_owner(session, settings, args.owner)
                print(f"revoked {count} key(s) of owner {args.owner}")
                return 0
            if args.id is not None:
                row = auth.revoke_by_id(session, args.id)
            else:
                token = sys.stdin.readline().strip() if args.key == "-" else args.key
                row = auth.revoke_by_token(session, settings, token)
            print(f"revoked key {row.key_hash[:12]}… of owner {row.owner}")
    except NotFound as error:
        print(f"memaudit: {error.message}", file=sys.stderr)
        return 1
    return 0


def _list_keys(_args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.services.auth import list_keys

    with session_scope() as session:
        keys = list_keys(session, get_settings())
    print(f"{'id':>5}  {'source':6}  {'state':7}  {'owner':20}  {'hash':12}  {'expires':25}  name")
    for key in keys:
        expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
        ident = str(key.id) if key.id is not None else "-"
        print(f"{ident:>5}  {key.source:6}  {key.state:7}  {key.owner:20}  {key.hash_prefix:12}  "
              f"{expires:25}  {key.name}")
    return 0

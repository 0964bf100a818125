"""``abi-engine token create|list|revoke``: access tokens, written to the database directly
(and to the audit log, as ``cli``)."""

from __future__ import annotations

import argparse
import sqlite3
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from abi_engine.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    SCOPES,
    CliError,
    _open_engine,
    _redact,
)
from abi_engine.errors import AbiError
from abi_engine.ids import format_time

if TYPE_CHECKING:
    from abi_engine.engine import Engine

CLI_ACTOR = "cli"


def _audit(engine: Engine, action: str, token_id: str | None, **change: Any) -> None:
    """Record a token change made here in the audit log, as ``cli``."""
    anyio.run(partial(engine.audit.record, CLI_ACTOR, action, "token", token_id, **change))


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], db: argparse.ArgumentParser
) -> None:
    """Register ``token create|list|revoke``."""
    token = commands.add_parser("token", help="manage access tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_commands.add_parser(
        "create", parents=[db], help="print a new access token for a user"
    )
    create.add_argument("--user", required=True, metavar="USER_ID", help="e.g. usr_alice")
    create.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        choices=SCOPES,
        metavar="SCOPE",
        help=f"a scope to grant, repeatable (default: all): {', '.join(SCOPES)}",
    )
    create.add_argument("--name", help="a label for the token")
    create.set_defaults(handler=_cmd_token_create)
    listing = token_commands.add_parser(
        "list", parents=[db], help="list live tokens: id, user, scopes, name (never the token)"
    )
    listing.add_argument("--user", metavar="USER_ID", help="only this user's tokens")
    listing.set_defaults(handler=_cmd_token_list)
    revoke = token_commands.add_parser(
        "revoke",
        parents=[db],
        help="revoke a token by its id (tok_...) and every token created from it",
    )
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="as `token list` shows it")
    revoke.set_defaults(handler=_cmd_token_revoke)


def _cmd_token_create(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        token = engine.tokens.create_token(args.user, args.scope or None, name=args.name)
        made = engine.tokens.authenticate(token)
        after = {"user_id": made.user_id, "scopes": sorted(made.scopes), "name": args.name}
        _audit(engine, "token.create", made.token_id, after=after)
    except AbiError as exc:
        raise CliError(exc.message) from None
    except sqlite3.Error as exc:
        raise CliError(f"cannot write to the database {_redact(args.db)!r}: {exc}") from None
    finally:
        engine.close()
    print(token)
    return EXIT_OK


def _cmd_token_list(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        tokens = engine.tokens.list_tokens(args.user)
    finally:
        engine.close()
    for token in tokens:
        scopes = ",".join(sorted(s.value for s in token.scopes))
        created = format_time(token.created_at)
        parent = token.parent_id or ""
        print(f"{token.id}\t{token.user_id}\t{created}\t{scopes}\t{token.name or ''}\t{parent}")
    return EXIT_OK


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        revoked = engine.tokens.revoke_tree(args.token_id)
        for token_id in revoked:
            _audit(engine, "token.revoke", token_id)
    except sqlite3.Error as exc:
        raise CliError(f"cannot write to the database {_redact(args.db)!r}: {exc}") from None
    finally:
        engine.close()
    if not revoked:
        raise CliError(
            f"no live token {args.token_id!r} (see `abi-engine token list`)", EXIT_FAILURE
        )
    for token_id in revoked:  # the token, then the tokens descended from it
        print(f"revoked {token_id}")
    return EXIT_OK

"""`instarec token USER_ID [--ttl SECONDS]`: a short-lived shopper token signed by the local key pair.

For the demo page and tests of `instarec serve`: the key pair under `INSTAREC_HOME/auth/` is created
on first use, and `instarec serve` verifies tokens against its public half (`jwks.json`). The token
is the last word of the one line printed, so `$(instarec token 42 | awk '{print $NF}')` takes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

from instarec_assets.serving.settings import ServingConfigError, ServingSettings


def add_token_command(commands: Any) -> None:
    """Register `token` on the `instarec` sub-command parser."""
    from instarec_assets.serving.auth import DEFAULT_TOKEN_TTL_S, MAX_TOKEN_TTL_S

    token = commands.add_parser(
        "token", help="print a short-lived local shopper token (for the page and tests)"
    )
    token.add_argument("user_id", type=int, help="the shopper's user id (1 to 2147483647)")
    token.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL_S,
        help=f"seconds the token is valid (default {DEFAULT_TOKEN_TTL_S}, at most {MAX_TOKEN_TTL_S})",
    )
    token.add_argument("--home", help="INSTAREC_HOME (default ./.instarec); the key pair is under auth/")
    token.set_defaults(handler=cmd_token)


def cmd_token(args: argparse.Namespace) -> None:
    from instarec_assets.serving.auth import issue_local_token

    if args.home:
        os.environ["INSTAREC_HOME"] = str(Path(args.home).resolve())
    settings = ServingSettings.from_env()
    if settings.aws or settings.auth_jwks_url:
        raise ServingConfigError(
            "instarec token signs with the local key pair; with INSTAREC_ENV=aws or INSTAREC_AUTH_JWKS_URL "
            "set, tokens come from the configured issuer (Cognito's hosted sign-in)"
        )
    if not 1 <= args.user_id <= 2_147_483_647:
        raise ServingConfigError(f"USER_ID must be 1 to 2147483647, not {args.user_id}")
    token = issue_local_token(settings, args.user_id, args.ttl)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.ttl)
    print(
        f"instarec token: user {args.user_id}, valid until {until:%Y-%m-%dT%H:%M:%SZ} "
        f"(send 'Authorization: Bearer <token>'): {token}"
    )

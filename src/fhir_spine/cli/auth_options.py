"""The authentication options every server command shares, and what turns them into an
`auth.Auth`: the `argparse` side of `auth.py`, which knows nothing of the command line.

A secret given as an option shows in `ps` and in shell history, so `--password`,
`--token` and `--client-secret` exist only to refuse it with a pointer to the safe way.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fhir_spine.auth import (
    DEFAULT_SCOPE,
    ENV_CLIENT_ID,
    ENV_PASSWORD,
    ENV_PRIVATE_KEY_FILE,
    ENV_PRIVATE_KEY_PASSWORD,
    ENV_SCOPE,
    ENV_TOKEN,
    ENV_USERNAME,
    Auth,
    AuthSettings,
    resolve_auth,
)


class _RefuseSecret(argparse.Action):
    """Stops a secret given on the command line, without echoing it back."""

    def __init__(self, option_strings: list[str], dest: str, safe: str = "",
                 **kwargs: Any) -> None:
        self.safe = safe
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.error(f"{option_string} is not accepted: a secret on the command line shows "
                     f"in process lists and shell history; use {self.safe}")


def add_auth_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "authentication", "Secrets are read from environment variables or files only "
        f"(${ENV_PASSWORD}, ${ENV_TOKEN}, --token-file, --private-key). See docs/server.md.")
    g.add_argument("--auth", choices=["auto", "none", "basic", "bearer", "smart"],
                   default="auto", help="auto (default): smart with --client-id and a key, "
                   f"bearer with ${ENV_TOKEN} or --token-file, basic with ${ENV_PASSWORD}, "
                   "else none")
    g.add_argument("--username", help=f"HTTP basic user (or ${ENV_USERNAME}); the password "
                   f"from ${ENV_PASSWORD} or --password-file")
    g.add_argument("--password-file", type=Path, help="file holding the HTTP basic password")
    g.add_argument("--token-file", type=Path,
                   help=f"file holding a bearer token (or ${ENV_TOKEN}); re-read after a 401")
    g.add_argument("--client-id", help=f"SMART backend services client id (or ${ENV_CLIENT_ID})")
    g.add_argument("--private-key", type=Path, metavar="FILE",
                   help="SMART signing key: PEM (RSA >= 2048 bits, or EC P-384) or JWK(S); "
                   f"or ${ENV_PRIVATE_KEY_FILE}; passphrase from ${ENV_PRIVATE_KEY_PASSWORD}")
    g.add_argument("--key-id", help="JWT `kid` (default: the key's RFC 7638 thumbprint)")
    g.add_argument("--scope", help=f"SMART scopes (default {DEFAULT_SCOPE!r}, or ${ENV_SCOPE})")
    g.add_argument("--token-url", help="token endpoint, when the server does not publish "
                   ".well-known/smart-configuration")
    for option, safe in (("--password", f"${ENV_PASSWORD} or --password-file"),
                         ("--token", f"${ENV_TOKEN} or --token-file"),
                         ("--client-secret", "--private-key (SMART asymmetric auth)")):
        g.add_argument(option, action=_RefuseSecret, safe=safe, help=argparse.SUPPRESS,
                       dest=f"refused_{option.strip('-').replace('-', '_')}")

def auth_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Auth:
    """The Auth the options (and the environment) ask for (`auth.resolve_auth`)."""
    return resolve_auth(AuthSettings(
        kind=getattr(args, "auth", "auto") or "auto",
        username=getattr(args, "username", None),
        password_file=getattr(args, "password_file", None),
        token_file=getattr(args, "token_file", None),
        client_id=getattr(args, "client_id", None),
        private_key=getattr(args, "private_key", None),
        key_id=getattr(args, "key_id", None),
        scope=getattr(args, "scope", None),
        token_url=getattr(args, "token_url", None)), env)

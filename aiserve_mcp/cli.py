"""The ``aiserve`` command: serve, worker, mcp (stdio), db upgrade, user and key management."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from pydantic import ValidationError

from aiserve_mcp import __version__
from aiserve_mcp.bootstrap import Services
from aiserve_mcp.core.errors import AiserveError
from aiserve_mcp.core.principal import SCOPES, Principal
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.supervisor import configure_logging
from aiserve_mcp.tools.auth import RegisterInput


def banner(settings: Settings, services: Services) -> str:
    """What ``aiserve serve`` prints before it starts: where it listens, its database (password hidden),
    which GPU providers and which payment mode are configured."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    database = services.db.engine.url.render_as_string(hide_password=True)
    providers = ", ".join(name for name, p in services.market.providers.items() if p.configured)
    if services.payments is None:
        payments = "off (set AISERVE_STRIPE_API_KEY, or AISERVE_BILLING_SANDBOX=true to try it out)"
    elif services.payments.name == "sandbox":
        payments = "sandbox (test cards only; no money moves)"
    else:
        payments = services.payments.name
    return "\n".join(
        [
            f"aiserve {__version__} on http://{host}:{settings.port}"
            + (f" ({settings.workers} processes)" if settings.workers > 1 else ""),
            f"  database:  {database}",
            f"  redis:     {'configured' if settings.redis_url else 'off (state kept in this process)'}",
            f"  providers: {providers}",
            f"  payments:  {payments}",
        ]
    )


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from aiserve_mcp.app import create_app

    settings = settings.model_copy(
        update={
            "host": args.host or settings.host,
            "port": args.port or settings.port,
            "workers": args.workers or settings.workers,
        }
    )
    if settings.workers > 1:
        _serve_many(settings)
        return
    app = create_app(settings)
    print(banner(settings, app.state.services), file=sys.stderr, flush=True)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), proxy_headers=False
    )


def _serve_many(settings: Settings) -> None:
    from aiserve_mcp.supervisor import Supervisor, several_refused

    refused = several_refused(settings)
    if refused is not None:
        raise SystemExit(f"error: --workers {settings.workers}: {refused}")
    services = Services.create(settings)  # for the banner: nothing connects
    print(banner(settings, services), file=sys.stderr, flush=True)
    asyncio.run(services.close())
    raise SystemExit(Supervisor(settings, settings.workers).run())


def _worker(args: argparse.Namespace, settings: Settings) -> None:
    from aiserve_mcp.worker.app import serve_worker

    serve_worker(args.host, args.port)


def _mcp(args: argparse.Namespace, settings: Settings) -> None:
    from aiserve_mcp.protocols.mcp.stdio import serve_stdio

    async def job(services: Services) -> None:
        await services.market.end_leftover_local()  # workers never outlive the server that started them
        await serve_stdio(services, settings)

    asyncio.run(_with_services(settings, job))


async def _with_services(settings: Settings, job: Callable[[Services], Awaitable[None]]) -> None:
    services = Services.create(settings)
    try:
        await services.migrate()
        await job(services)
    finally:
        await services.close()


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> None:
    async def job(services: Services) -> None:
        print(f"database at the latest schema: {services.db.engine.url.render_as_string()}")

    asyncio.run(_with_services(settings, job))


def _user_create(args: argparse.Namespace, settings: Settings) -> None:
    password = args.password or getpass.getpass("Password: ")
    fields = RegisterInput.model_validate({"email": args.email, "password": password, "name": args.name})

    async def job(services: Services) -> None:
        user = await services.accounts.create_user(
            fields.email, fields.password, fields.name, is_admin=args.admin
        )
        print(f"created {'admin ' if user.is_admin else ''}user {user.email} ({user.id})")

    asyncio.run(_with_services(settings, job))


def _user_admin(args: argparse.Namespace, settings: Settings) -> None:
    async def job(services: Services) -> None:
        user = await services.accounts.set_admin(args.email.strip().lower(), not args.revoke)
        print(f"{user.email} is {'now' if user.is_admin else 'no longer'} an admin")

    asyncio.run(_with_services(settings, job))


def _key_create(args: argparse.Namespace, settings: Settings) -> None:
    async def job(services: Services) -> None:
        accounts = services.accounts
        user = await accounts.user_by_email(args.email.strip().lower())
        owner = Principal(user.id, user.email, user.is_admin, "jwt")
        key, plaintext = await accounts.create_api_key(owner, args.name, args.expires_at, args.scope)
        print(plaintext)
        print(f"key id {key.id}; store the key now, it is not shown again", file=sys.stderr)

    asyncio.run(_with_services(settings, job))


def _key_list(args: argparse.Namespace, settings: Settings) -> None:
    async def job(services: Services) -> None:
        user = await services.accounts.user_by_email(args.email.strip().lower())
        for key in await services.accounts.list_api_keys(user.id):
            state = "revoked" if key.revoked_at else "active"
            scopes = "all" if key.scopes is None else ",".join(key.scopes)
            expires = key.expires_at.isoformat() if key.expires_at else "never"
            print(f"{key.id}\t{key.prefix}…\t{state}\t{key.name}\texpires {expires}\tscopes {scopes}")

    asyncio.run(_with_services(settings, job))


def _key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    async def job(services: Services) -> None:
        user = await services.accounts.user_by_email(args.email.strip().lower())
        key = await services.accounts.revoke_api_key(user.id, args.id)
        print(f"revoked key {key.id} ({key.name})")

    asyncio.run(_with_services(settings, job))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserve", description="Agent-native GPU and model-serving platform."
    )
    parser.add_argument("--version", action="version", version=f"aiserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server (REST, MCP, metrics)")
    serve.add_argument("--host", help="bind address (default: AISERVE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: AISERVE_PORT or 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        choices=range(1, 65),
        metavar="N",
        help="server processes on the port, 1 to 64; more than 1 needs PostgreSQL and Redis "
        "(default: AISERVE_WORKERS or 1)",
    )
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker", help="run the worker that serves models on a rented instance (token: AISERVE_WORKER_TOKEN)"
    )
    worker.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    worker.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: 8000)")
    worker.set_defaults(run=_worker)

    mcp = commands.add_parser("mcp", help="serve MCP over stdio as the owner of AISERVE_API_KEY")
    mcp.set_defaults(run=_mcp)

    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="apply pending migrations").set_defaults(run=_db_upgrade)

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    create = user.add_parser("create", help="create a user (password prompted when omitted)")
    create.add_argument("--email", required=True)
    create.add_argument("--password")
    create.add_argument("--name")
    create.add_argument("--admin", action="store_true", help="make the user an administrator")
    create.set_defaults(run=_user_create)
    admin = user.add_parser("admin", help="grant (or with --revoke, remove) administrator rights")
    admin.add_argument("--email", required=True)
    admin.add_argument("--revoke", action="store_true")
    admin.set_defaults(run=_user_admin)

    key = commands.add_parser("key", help="manage API keys").add_subparsers(dest="key_command", required=True)
    key_create = key.add_parser("create", help="create an API key for a user and print it once")
    key_create.add_argument("--email", required=True, help="the owner's email")
    key_create.add_argument("--name", default="cli", help="a label for the key")
    key_create.add_argument("--expires-at", type=datetime.fromisoformat, help="ISO 8601 with zone")
    key_create.add_argument(
        "--scope",
        action="append",
        choices=sorted(SCOPES),
        help="grant this scope (repeatable; default: all of the user's except guardrails:admin and admin)",
    )
    key_create.set_defaults(run=_key_create)
    key_list = key.add_parser("list", help="list a user's API keys (never the secrets)")
    key_list.add_argument("--email", required=True, help="the owner's email")
    key_list.set_defaults(run=_key_list)
    key_revoke = key.add_parser("revoke", help="revoke one of a user's API keys; it stops working at once")
    key_revoke.add_argument("--email", required=True, help="the owner's email")
    key_revoke.add_argument("--id", required=True, help="the key's id (from key list)")
    key_revoke.set_defaults(run=_key_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    try:
        args.run(args, settings)
    except AiserveError as exc:
        raise SystemExit(f"error: {exc.message}") from None
    except ValidationError as exc:
        raise SystemExit(f"error: {exc.errors(include_url=False)[0]['msg']}") from None

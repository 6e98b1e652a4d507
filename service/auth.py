"""Bearer tokens and roles for the user and admin APIs.

A token is shown once when a user is created; only its SHA-256 is stored, so a
copy of the database reveals no usable token. Routes declare what they need as
dependencies (``CurrentUser``, ``require_role(...)``) instead of checking in
their bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy import bindparam, select

from service.db import loop_fetchall, loop_fetchall_async, session_scope
from service.errors import ServiceError
from service.models import USER_ROLES, User

TOKEN_PREFIX = "plk_"  # noqa: S105 - the visible start of every token, not a secret


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The authenticated user of one request."""

    id: int
    name: str
    role: str
    clearance: str
    signatory_key_id: str | None


def create_user(
    engine: object,
    name: str,
    role: str,
    now: datetime,
    clearance: str = "unrestricted",
    signatory_key_id: str | None = None,
) -> tuple[User, str]:
    """Create a user; returns the row and the token (shown once, never stored)."""
    if role not in USER_ROLES:
        raise ServiceError(
            f"unknown role {role!r}; one of {', '.join(USER_ROLES)}",
            code="user.bad_role",
            status=422,
            field="role",
        )
    token = new_token()
    with session_scope(engine) as s:  # type: ignore[arg-type]
        user = User(
            name=name,
            role=role,
            clearance=clearance,
            token_hash=hash_token(token),
            disabled=False,
            created_at=now,
            signatory_key_id=signatory_key_id,
        )
        s.add(user)
        s.flush()
    return user, token


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        raise ServiceError("a bearer token is required", code="auth.missing_token", status=401)
    digest = hash_token(token.strip())
    # A disabled user or a rotated token is refused at once: the token is read on every request, or (on
    # PostgreSQL, under ``prolink serve``) kept from an earlier read only until ``user_account`` changes
    # (``service.token_cache``: the change's commit notifies the node, which forgets what it kept).
    # SQLite: one indexed read of a local file, on the event loop, straight through the driver
    # (``loop_fetchall``). A hop to a worker thread and back costs more than the read, several times more
    # while other requests hold the interpreter, and so does SQLAlchemy's connection machinery (measured
    # with bench/bench_user_api.py under 8 concurrent clients: the hop 0.5-0.8 ms of CPU per request, the
    # machinery about 0.2 ms). A WAL reader never waits for writers, so the read does not stall the loop.
    # PostgreSQL: a round trip to the server, awaited on the loop over its own connection
    # (``loop_fetchall_async``), so no thread hop either.
    node = request.app.state.node
    cache = node.token_cache
    if cache is not None and (known := cache.get(digest)) is not None:
        return cast(Principal, known)
    generation = cache.generation if cache is not None else 0
    engine = node.engine
    params = {"token_hash": digest}
    if engine.dialect.name == "sqlite":
        rows = loop_fetchall(engine, _USER_BY_TOKEN, params)
    else:
        rows = await loop_fetchall_async(engine, _USER_BY_TOKEN, params)
    if not rows:
        raise ServiceError("unknown token", code="auth.bad_token", status=401)
    user_id, name, role, clearance, token_hash, disabled, signatory_key_id = rows[0]  # _USER_BY_TOKEN's
    if not hmac.compare_digest(token_hash, digest):
        raise ServiceError("unknown token", code="auth.bad_token", status=401)
    if disabled:  # SQLite gives 0 or 1, PostgreSQL a bool
        raise ServiceError("this user is disabled", code="auth.user_disabled", status=403)
    principal = Principal(user_id, name, role, clearance, signatory_key_id)
    if cache is not None:
        cache.put(digest, principal, generation)
    return principal


_user = User.__table__  # type: ignore[attr-defined]
_USER_BY_TOKEN = select(
    _user.c.id,
    _user.c.name,
    _user.c.role,
    _user.c.clearance,
    _user.c.token_hash,
    _user.c.disabled,
    _user.c.signatory_key_id,
).where(_user.c.token_hash == bindparam("token_hash"))


CurrentUser = Annotated[Principal, Depends(authenticate)]


def require_role(*roles: str) -> Callable[[Principal], Principal]:
    """Dependency: the current user, if their role is one of ``roles``; else 403 ``auth.wrong_role``."""

    async def check(user: CurrentUser) -> Principal:  # async: a comparison needs no worker thread
        if user.role not in roles:
            raise ServiceError(
                f"this needs the role {' or '.join(roles)}; you are {user.role}",
                code="auth.wrong_role",
                status=403,
            )
        return user

    return check

"""API tokens: only a sha256 digest is stored; a presented token is looked up by its
digest and compared in constant time. Used by the read API and the status site
(`mlsm.web.access`), the admin writes, the agent API and `mlsm-controller token`."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm.store.database import Store
from mlsm.store.models import Token

__all__ = ["issue_token", "live_token", "token_digest", "token_role"]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, role: str, node: str | None = None) -> str:
    """A new token's secret, to show once; its digest and prefix are added to the
    session (stored when it commits)."""
    secret = f"mlsm_{secrets.token_urlsafe(32)}"
    session.add(Token(role=role, node=node, digest=token_digest(secret), prefix=secret[:12]))
    return secret


def live_token(session: Session, token: str) -> Token | None:
    """The token's row when it exists and is not revoked."""
    digest = token_digest(token)
    row = session.scalars(select(Token).where(Token.digest == digest)).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.digest, digest):
        return None
    return row


def token_role(store: Store, token: str) -> str | None:
    """The role of a live token, or None."""
    with store.read() as session:
        row = live_token(session, token)
        return row.role if row is not None else None

"""Sign-in sessions of the pages: a random id per sign-in, kept by its hash with the viewer the
token proved and when the session ends (never after the token), so every worker knows them.

The id is the only secret a browser holds; the table keeps its SHA-256, so reading the table
does not give a usable session. Each session has its own CSRF token for the pages' forms.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from registry.model import Persona, Viewer
from registry.tables import PageSession

# The longest a session lasts, whatever its token allows.
MAX_SESSION = timedelta(hours=12)
PRUNE_EVERY = 50
_starts = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Session:
    viewer: Viewer
    csrf: str
    expires_at: datetime

    def accepts(self, csrf: str | None) -> bool:
        """Return whether a form's CSRF token is this session's."""
        return csrf is not None and hmac.compare_digest(csrf.encode(), self.csrf.encode())


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


async def start(*, viewer: Viewer, token_expires_at: datetime) -> tuple[str, Session]:
    """Return a new session's id and the session, ending when the token does (or sooner)."""
    now = datetime.now(UTC)
    session = Session(
        viewer=viewer,
        csrf=secrets.token_urlsafe(32),
        expires_at=min(token_expires_at, now + MAX_SESSION),
    )
    session_id = secrets.token_urlsafe(32)
    await PageSession.insert(
        PageSession(
            id_hash=_hash(session_id),
            subject=viewer.subject,
            personas=",".join(sorted(p.value for p in viewer.personas)),
            csrf=session.csrf,
            created_at=now,
            expires_at=session.expires_at,
        )
    )
    if next(_starts) % PRUNE_EVERY == 0:
        await PageSession.delete().where(PageSession.expires_at <= now)
    return session_id, session


async def find(session_id: str | None) -> Session | None:
    """Return the live session an id names, or None (unknown, ended or expired)."""
    if not session_id or len(session_id) > 128:
        return None
    rows = await PageSession.select().where(
        PageSession.id_hash == _hash(session_id),
        PageSession.expires_at > datetime.now(UTC),
    )
    if not rows:
        return None
    row = rows[0]
    personas = frozenset(Persona(p) for p in row["personas"].split(",") if p)
    expires_at = row["expires_at"]
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    return Session(
        viewer=Viewer(subject=row["subject"], personas=personas),
        csrf=row["csrf"],
        expires_at=expires_at,
    )


async def end(session_id: str) -> None:
    """End a session (nothing happens for an unknown id)."""
    await PageSession.delete().where(PageSession.id_hash == _hash(session_id))

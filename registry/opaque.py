"""Opaque public ids: the row ids a cursor or an alert id carries, sealed with the service's key.

A row id says how many rows came before it and lets a caller guess its neighbours; a cursor a
caller can edit would page from wherever it pointed. So every public value that carries a row
id is sealed with AES-SIV (RFC 5297): deterministic, so the same row always gets the same id and
an answer's bytes depend only on its data (ETags stay true), and authenticated, so a changed
byte is refused (`BAD_USER_INPUT`), never read as another row. Each kind of id is sealed with its
own associated data, so an alert id is no cursor.

The key is made once per database (table service_key, by whichever worker starts first) and read
by every worker of every host that serves it, so ids and cursors survive restarts and work
behind a load balancer. `load()` runs when the application starts; the registry's async entry
points that seal or open a value await it too.
"""

from __future__ import annotations

import base64
import binascii
import struct
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from registry.errors import BadInput
from registry.tables import ServiceKey

KEY_NAME = "opaque-ids"
KEY_BITS = 512  # AES-256-SIV: two 256-bit keys
# A cursor: detection time in microseconds since 1970 and the row id; an alert id: the row id.
_CURSOR = struct.Struct(">qq")
_ROW = struct.Struct(">q")
_CURSOR_KIND = b"incident-cursor"
_ALERT_KIND = b"alert-id"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_sealer: AESSIV | None = None


async def load() -> None:
    """Read the database's key, making it if no worker has yet (the first insert wins)."""
    global _sealer
    if _sealer is not None:
        return
    made = base64.urlsafe_b64encode(AESSIV.generate_key(KEY_BITS)).decode()
    await ServiceKey.insert(
        ServiceKey(name=KEY_NAME, secret=made, created_at=datetime.now(UTC))
    ).on_conflict(action="DO NOTHING")
    row = await ServiceKey.select(ServiceKey.secret).where(ServiceKey.name == KEY_NAME).first()
    assert row is not None
    _sealer = AESSIV(base64.urlsafe_b64decode(row["secret"]))


def _key() -> AESSIV:
    if _sealer is None:
        raise RuntimeError("registry.opaque.load() has not run")
    return _sealer


def _seal(plain: bytes, kind: bytes) -> str:
    return base64.urlsafe_b64encode(_key().encrypt(plain, [kind])).rstrip(b"=").decode()


def _open(sealed: str, kind: bytes) -> bytes:
    """Return what `sealed` holds, or raise ValueError for anything the service did not seal."""
    if not sealed.isascii() or len(sealed) > 128:
        raise ValueError("not a sealed value")
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        # One spelling per value: the last character's unused bits may not vary.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != sealed:
            raise ValueError("not a sealed value")
        return _key().decrypt(raw, [kind])
    except (binascii.Error, InvalidTag) as error:
        raise ValueError("not a sealed value") from error


def cursor(detected_at: datetime, pk: int) -> str:
    """Return the cursor just past the incident detected then with this row id."""
    micros = (detected_at - _EPOCH) // _MICROSECOND
    return _seal(_CURSOR.pack(micros, pk), _CURSOR_KIND)


def open_cursor(sealed: str, argument: str = "after") -> tuple[datetime, int]:
    """Return the (detected_at, row id) of a cursor this service issued; BadInput otherwise."""
    try:
        plain = _open(sealed, _CURSOR_KIND)
        micros, pk = _CURSOR.unpack(plain)
        return _EPOCH + micros * _MICROSECOND, pk
    except (ValueError, struct.error, OverflowError):
        raise BadInput(f"{argument} is not a cursor this service issued") from None


def alert_id(pk: int) -> str:
    """Return an alert's public id."""
    return _seal(_ROW.pack(pk), _ALERT_KIND)

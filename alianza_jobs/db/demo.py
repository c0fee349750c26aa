"""Demo data for a local database, so ``dagster dev`` shows every job with something to do.

Deterministic for a given ``seed`` and database state: the same command on the same database writes
the same rows. Seeding again adds new rows (numbering continues after the existing users) rather
than colliding with the old ones.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import EmailStatus, StreamingStatus
from alianza_jobs.db.platform_models import EmailQueue, Streaming, User, UserSession
from alianza_jobs.db.types import utcnow

FIRST_NAMES = (
    "María", "José", "Lucía", "Juan", "Camila", "Carlos", "Valentina", "Luis", "Sofía", "Andrés",
    "Isabella", "Diego", "Gabriela", "Javier", "Daniela", "Miguel", "Fernanda", "Ricardo", "Paula",
    "Alejandro", "Ana", "Mateo", "Carmen", "Santiago", "Elena", "Tomás", "Renata", "Pablo",
)  # fmt: skip
LAST_NAMES = (
    "García", "Rodríguez", "Martínez", "Hernández", "López", "González", "Pérez", "Sánchez",
    "Ramírez", "Torres", "Flores", "Rivera", "Gómez", "Díaz", "Reyes", "Morales", "Cruz", "Ortiz",
    "Castillo", "Jiménez", "Vargas", "Romero", "Herrera", "Medina", "Aguilar", "Navarro",
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.org", "correo.example", "alianza.example")
EMAILS = (
    (
        "Bienvenida a Alianza, {first}",
        "<h1>¡Hola, {first}!</h1><p>Tu cuenta está lista. Sube tu primer video cuando quieras.</p>",
        "¡Hola, {first}! Tu cuenta está lista. Sube tu primer video cuando quieras.",
    ),
    (
        "Tu video está listo",
        "<p>{first}, tu video terminó de procesarse y ya se puede ver.</p>",
        "{first}, tu video terminó de procesarse y ya se puede ver.",
    ),
    (
        "Restablece tu contraseña",
        '<p>Para elegir una contraseña nueva, <a href="https://alianza.example/reset">entra '
        "aquí</a>. El enlace caduca en una hora.</p>",
        "Para elegir una contraseña nueva, entra en https://alianza.example/reset "
        "(caduca en una hora).",
    ),
    (
        "Resumen semanal de tu canal",
        "<p>{first}, esta semana tus videos sumaron nuevas visitas. Mira el detalle en tu panel.</p>",
        "{first}, esta semana tus videos sumaron nuevas visitas. Mira el detalle en tu panel.",
    ),
)
SOFT_DELETED_SHARE = 0.08
_CHUNK = 2_000


@dataclass(frozen=True)
class DemoVideo:
    """A queued Stream video: the Stream emulator must know it by this uid and creation time."""

    external_id: str
    created_at: datetime


@dataclass(frozen=True)
class DemoData:
    users: int
    soft_deleted_users: int
    sessions: int
    expired_sessions: int
    emails: int
    videos: list[DemoVideo] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.users} users ({self.soft_deleted_users} soft-deleted), "
            f"{self.sessions} sessions ({self.expired_sessions} expired), "
            f"{len(self.videos)} queued videos, {self.emails} pending emails"
        )


async def seed_demo(
    engine: AsyncEngine,
    *,
    users: int = 50,
    sessions: int = 200,
    expired_ratio: float = 0.3,
    videos: int = 20,
    emails: int = 30,
    seed: int = 42,
    now: datetime | None = None,
) -> DemoData:
    """Insert demo users, sessions (some expired), queued videos and pending emails in one go."""
    if min(users, sessions, videos, emails) < 0:
        raise ValueError("counts must not be negative")
    if not 0.0 <= expired_ratio <= 1.0:
        raise ValueError(f"expired_ratio={expired_ratio} is not between 0 and 1")
    if users == 0 and (sessions or emails):
        raise ValueError("sessions and emails need at least one user")
    now = now or utcnow()
    async with engine.begin() as conn:
        existing = int((await conn.scalar(select(func.count()).select_from(User))) or 0)
        rng = random.Random(f"{seed}:{existing}")

        people = [_person(rng, existing + n + 1, now) for n in range(users)]
        deleted = set(rng.sample(range(users), round(users * SOFT_DELETED_SHARE)))
        for index in deleted:
            people[index]["deleted_at"] = now - timedelta(days=rng.uniform(0, 20))
        user_ids: list[int] = []
        for chunk in _chunks(people):
            result = await conn.execute(
                insert(User).returning(User.id, sort_by_parameter_order=True), chunk
            )
            user_ids += list(result.scalars())

        expired = round(sessions * expired_ratio)
        session_rows = [
            _session(rng, rng.choice(user_ids), now, expired=n < expired) for n in range(sessions)
        ]
        for chunk in _chunks(session_rows):
            await conn.execute(insert(UserSession), chunk)

        video_rows = [_video(rng, now) for _ in range(videos)]
        for chunk in _chunks(video_rows):
            await conn.execute(insert(Streaming), chunk)

        live = [p for i, p in enumerate(people) if i not in deleted] or people
        email_rows = [_email(rng, rng.choice(live), now) for _ in range(emails)]
        for chunk in _chunks(email_rows):
            await conn.execute(insert(EmailQueue), chunk)

    return DemoData(
        users=users,
        soft_deleted_users=len(deleted),
        sessions=sessions,
        expired_sessions=expired,
        emails=emails,
        videos=sorted(
            (DemoVideo(row["external_id"], row["created_at"]) for row in video_rows),
            key=lambda video: video.created_at,
        ),
    )


async def has_users(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return (await conn.scalar(select(User.id).limit(1))) is not None


def _person(rng: random.Random, number: int, now: datetime) -> dict[str, Any]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = f"{_ascii(first)}.{_ascii(last)}.{number}"
    created = now - timedelta(days=rng.uniform(1, 365))
    return {
        "email": f"{local}@{rng.choice(EMAIL_DOMAINS)}",
        "name": f"{first} {last}",
        "created_at": created,
        "updated_at": created,
        "deleted_at": None,
    }


def _session(rng: random.Random, user_id: int, now: datetime, *, expired: bool) -> dict[str, Any]:
    if expired:
        expires = now - timedelta(minutes=rng.uniform(1, 60 * 24 * 30))
    else:
        expires = now + timedelta(minutes=rng.uniform(5, 60 * 24 * 30))
    created = min(now, expires) - timedelta(days=rng.uniform(0.1, 30))
    return {
        "user_id": user_id,
        "token_hash": hashlib.sha256(rng.randbytes(32)).hexdigest(),
        "expires_at": expires,
        "created_at": created,
        "updated_at": created,
    }


def _video(rng: random.Random, now: datetime) -> dict[str, Any]:
    created = now - timedelta(minutes=rng.uniform(1, 180))
    return {
        "external_id": f"{rng.getrandbits(128):032x}",
        "provider": "cloudflare",
        "status": StreamingStatus.QUEUED.value,
        "created_at": created,
        "updated_at": created,
    }


def _email(rng: random.Random, person: dict[str, Any], now: datetime) -> dict[str, Any]:
    subject, html, text = rng.choice(EMAILS)
    first = str(person["name"]).split()[0]
    created = now - timedelta(minutes=rng.uniform(0, 30))
    return {
        "to_address": person["email"],
        "subject": subject.format(first=first),
        "html": html.format(first=first),
        "text": text.format(first=first),
        "status": EmailStatus.PENDING.value,
        "created_at": created,
        "updated_at": created,
    }


def _ascii(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if c.isascii()).lower()


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK)]


__all__ = ["DemoData", "DemoVideo", "has_users", "seed_demo"]

"""What an ``email_queue`` row must satisfy before it may go into a Resend batch.

Addresses (``local@domain`` or ``Name <local@domain>``, internationalised domains sent in their
ASCII form under IDNA 2008 with UTS 46 mapping), header values without line breaks, a subject, a body, and at most 40,000,000 bytes of
JSON per email. A row that breaks a rule is dead-lettered with the rule's reason and never sent;
``docs/emails.md`` says why each rule is drawn where it is.
"""

from __future__ import annotations

import json
import unicodedata

import idna

from alianza_jobs.clients.resend import OutgoingEmail

MAX_EMAIL_BYTES = 40_000_000
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 253
MAX_LABEL_OCTETS = 63
MAX_ADDRESS_OCTETS = 254
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit; also the width of email_queue.subject

# RFC 5322 atext (dot-atom characters) besides letters and digits.
_ATEXT_SYMBOLS = frozenset("!#$%&'*+-/=?^_`{|}~")
# Characters that end a header line somewhere along the way to an inbox.
_LINE_BREAKS = frozenset("\r\n\0\x85\u2028\u2029")
# Unicode categories never acceptable inside an address: controls, format characters, surrogates,
# private use, unassigned, and every kind of space or separator.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


class InvalidEmail(ValueError):
    """A row breaks a rule; ``field`` names the column, ``reason`` says which rule."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def check_header_value(value: str, *, field: str) -> None:
    """Refuse a header value that carries a line break (header injection) or a NUL."""
    found = next((c for c in value if c in _LINE_BREAKS), None)
    if found is not None:
        raise InvalidEmail(field, f"contains a line break or NUL ({found!r}): refused, never sent")


def normalize_address(value: str | None, *, field: str) -> str:
    """The address as it goes to Resend (IDN domain in ASCII), or :class:`InvalidEmail`."""
    if value is None or not value.strip():
        raise InvalidEmail(field, "missing")
    text = value.strip()
    check_header_value(text, field=field)
    name: str | None = None
    address = text
    if text.endswith(">") and "<" in text:
        cut = text.rindex("<")
        name, address = text[:cut].strip(), text[cut + 1 : -1].strip()
        if "<" in name or ">" in name:
            raise InvalidEmail(field, "display name must not contain '<' or '>'")
    elif "<" in text or ">" in text:
        raise InvalidEmail(field, "expected 'local@domain' or 'Name <local@domain>'")
    if "<" in address or ">" in address:
        raise InvalidEmail(field, "address must not contain '<' or '>'")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidEmail(field, f"{address!r} is not of the form local@domain")
    _check_local(local, field)
    ascii_domain = _ascii_domain(domain, field)
    bare = f"{local}@{ascii_domain}"
    if len(bare.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise InvalidEmail(field, f"address longer than {MAX_ADDRESS_OCTETS} octets")
    return f"{name} <{bare}>" if name else bare


def _check_local(local: str, field: str) -> None:
    if len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
        raise InvalidEmail(field, f"local part longer than {MAX_LOCAL_OCTETS} octets")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidEmail(field, "local part has a leading, trailing or doubled dot")
    for char in local:
        if char == ".":
            continue
        if char.isascii():
            if not (char.isalnum() or char in _ATEXT_SYMBOLS):
                raise InvalidEmail(field, f"character {char!r} is not allowed in a local part")
        elif unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise InvalidEmail(field, f"character {char!r} is not allowed in a local part")


def _ascii_domain(domain: str, field: str) -> str:
    if domain.startswith("[") or domain.endswith("."):
        raise InvalidEmail(field, f"domain {domain!r}: IP literals and trailing dots not accepted")
    if not domain.isascii():
        domain = _idna_2008(domain, field)
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidEmail(field, f"domain {domain!r} needs at least two labels")
    for label in labels:
        if not label:
            raise InvalidEmail(field, f"domain {domain!r} has an empty label")
        if len(label) > MAX_LABEL_OCTETS:
            raise InvalidEmail(field, f"domain label longer than {MAX_LABEL_OCTETS} octets")
        if not set(label) <= _LDH or label.startswith("-") or label.endswith("-"):
            raise InvalidEmail(field, f"domain label {label!r} is not letters, digits, hyphens")
    if labels[-1].isdigit():
        raise InvalidEmail(field, f"top-level domain {labels[-1]!r} is all digits")
    if len(domain) > MAX_DOMAIN_OCTETS:
        raise InvalidEmail(field, f"domain longer than {MAX_DOMAIN_OCTETS} octets")
    return domain


def _idna_2008(domain: str, field: str) -> str:
    """The domain's ASCII form under IDNA 2008, after UTS 46's non-transitional mapping: what
    registries and browsers resolve today. Python's own ``idna`` codec is IDNA 2003, which maps
    ß to ss and final sigma to sigma (another domain, someone else's) and drops joiners; here
    those are kept (ß, ς) or refused (a joiner out of its context), never changed."""
    try:
        encoded = idna.encode(domain, uts46=True, transitional=False)
    except idna.IDNAError as exc:
        raise InvalidEmail(
            field, f"domain {domain!r} cannot be encoded under IDNA 2008 (UTS 46): {exc}"
        ) from None
    return encoded.decode("ascii")


def wire_size(email: OutgoingEmail) -> int:
    """Bytes of the email's JSON as it travels in a batch request."""
    return len(
        json.dumps(email.to_wire(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    )


def prepare_email(
    *,
    to_address: str | None,
    from_address: str | None,
    subject: str | None,
    html: str | None,
    text: str | None,
    default_from: str,
    max_bytes: int = MAX_EMAIL_BYTES,
) -> OutgoingEmail:
    """The email to send for a queue row, every rule checked; or :class:`InvalidEmail`.

    ``from_address`` null means ``default_from`` (``EMAIL_FROM``).
    """
    to = normalize_address(to_address, field="to_address")
    sender = normalize_address(
        from_address if from_address is not None else default_from,
        field="from_address" if from_address is not None else "from_address (EMAIL_FROM)",
    )
    if subject is None or not subject.strip():
        raise InvalidEmail("subject", "missing")
    check_header_value(subject, field="subject")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidEmail("subject", f"longer than {MAX_SUBJECT_CHARS} characters")
    if not html and not text:
        raise InvalidEmail("body", "neither html nor text")
    email = OutgoingEmail(
        from_=sender, to=[to], subject=subject, html=html or None, text=text or None
    )
    size = wire_size(email)
    if size > max_bytes:
        raise InvalidEmail("body", f"{size:,} bytes, over Resend's {max_bytes:,}-byte limit")
    return email


__all__ = [
    "MAX_EMAIL_BYTES",
    "InvalidEmail",
    "check_header_value",
    "normalize_address",
    "prepare_email",
    "wire_size",
]

"""What the Resend emulator accepts as one email: addresses (``from``, ``to``, ``cc``, ``bcc``,
``reply_to``, at most 50 recipients each), subject, body, headers and tags, and what a batch may
not carry; the first problem found is answered as Resend's ``validation_error`` or
``missing_required_field``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_RECIPIENTS = 50

_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})+"
ADDRESS_PATTERN = re.compile(rf"^(?:{_ADDRESS}|[^<>\r\n]*<{_ADDRESS}>)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_ADDRESS_FORMAT = (
    "The email address needs to follow the `email@example.com` or "
    "`Name <email@example.com>` format."
)


@dataclass(frozen=True)
class Invalid:
    name: str
    message: str


def _addresses(item: Mapping[str, Any], field: str, *, required: bool) -> Invalid | None:
    value = item.get(field)
    if value is None or value == "" or value == []:
        return Invalid("missing_required_field", f"Missing `{field}` field.") if required else None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return Invalid("validation_error", f"Invalid `{field}` field. {_ADDRESS_FORMAT}")
    if len(values) > MAX_RECIPIENTS:
        return Invalid(
            "validation_error",
            f"Too many recipients in `{field}`: {len(values)}. The maximum is {MAX_RECIPIENTS}.",
        )
    for address in values:
        if not ADDRESS_PATTERN.match(address.strip()):
            return Invalid("validation_error", f"Invalid `{field}` field. {_ADDRESS_FORMAT}")
    return None


def validate_email(item: Any, *, in_batch: bool) -> Invalid | None:
    """The first problem with one email, or None. Mirrors Resend's rules that matter to us."""
    if not isinstance(item, dict):
        return Invalid("validation_error", "The email must be a JSON object.")
    problem = _addresses(item, "from", required=True)
    if problem is None and isinstance(item.get("from"), list):
        problem = Invalid("validation_error", f"Invalid `from` field. {_ADDRESS_FORMAT}")
    problem = problem or _addresses(item, "to", required=True)
    for field in ("cc", "bcc", "reply_to"):
        problem = problem or _addresses(item, field, required=False)
    if problem:
        return problem
    subject = item.get("subject")
    if subject is None or subject == "":
        return Invalid("missing_required_field", "Missing `subject` field.")
    if not isinstance(subject, str):
        return Invalid("validation_error", "Invalid `subject` field. It must be a string.")
    if "\r" in subject or "\n" in subject:
        return Invalid(
            "validation_error", "Invalid `subject` field. It must not contain line breaks."
        )
    for field in ("html", "text"):
        if item.get(field) is not None and not isinstance(item[field], str):
            return Invalid("validation_error", f"Invalid `{field}` field. It must be a string.")
    if not item.get("html") and not item.get("text") and not item.get("template"):
        return Invalid("missing_required_field", "Missing `html` or `text` field.")
    headers = item.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            return Invalid("validation_error", "Invalid `headers` field. It must be an object.")
        for name, value in headers.items():
            if not isinstance(value, str) or not _HEADER_NAME.match(name):
                return Invalid("validation_error", f"Invalid header `{name[:64]}`.")
            if "\r" in value or "\n" in value:
                return Invalid(
                    "validation_error",
                    f"Invalid header `{name}`: values must not contain line breaks.",
                )
    tags = item.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            return Invalid("validation_error", "Invalid `tags` field. It must be an array.")
        for tag in tags:
            if not (
                isinstance(tag, dict)
                and isinstance(tag.get("name"), str)
                and _TAG.match(tag["name"])
                and isinstance(tag.get("value", ""), str)
                and (tag.get("value", "") == "" or _TAG.match(tag["value"]))
            ):
                return Invalid(
                    "validation_error",
                    "Invalid `tags` field. Tag names and values may only contain ASCII letters, "
                    "numbers, underscores or dashes, up to 256 characters.",
                )
    if in_batch and item.get("attachments"):
        return Invalid(
            "validation_error", "The `attachments` field is not supported in batch emails."
        )
    if in_batch and item.get("scheduled_at"):
        return Invalid(
            "validation_error", "The `scheduled_at` field is not supported in batch emails."
        )
    return None

"""email_rules: what may go into a Resend batch, and the reason given for what may not."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alianza_jobs.defs.emails.rules import (
    MAX_EMAIL_BYTES,
    InvalidEmail,
    check_header_value,
    normalize_address,
    prepare_email,
    wire_size,
)
from alianza_jobs.emulators.resend import validate_email

DEFAULT_FROM = "Alianza <jobs@alianza.test>"


def prepare(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "to_address": "ana@example.com",
        "from_address": None,
        "subject": "Hola",
        "html": "<p>Hola</p>",
        "text": "Hola",
        "default_from": DEFAULT_FROM,
        **overrides,
    }
    return prepare_email(**fields)


@pytest.mark.parametrize(
    ("given_", "sent"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  ana@example.com ", "ana@example.com"),
        ("Ana Pérez <ana@example.com>", "Ana Pérez <ana@example.com>"),
        ('"Pérez, Ana" <ana@example.com>', '"Pérez, Ana" <ana@example.com>'),
        ("first.last+tag@mail.example.co", "first.last+tag@mail.example.co"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x@a-b.example", "x@a-b.example"),
        # IDN domains go out as their A-label, which every mail system accepts.
        ("ana@bücher.de", "ana@xn--bcher-kva.de"),
        ("Ana <ana@münchen.example>", "Ana <ana@xn--mnchen-3ya.example>"),
        # RFC 6531 local parts pass our check unchanged (Resend decides; see the module doc).
        ("josé@example.com", "josé@example.com"),
        ("用户@example.com", "用户@example.com"),
    ],
)
def test_valid_addresses_and_what_is_sent(given_: str, sent: str) -> None:
    assert normalize_address(given_, field="to_address") == sent


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "missing"),
        ("   ", "missing"),
        ("ana", "local@domain"),
        ("ana@", "local@domain"),
        ("@example.com", "local@domain"),
        ("ana@@example.com", "not allowed"),
        ("ana@localhost", "two labels"),
        ("ana@example..com", "empty label"),
        ("ana@example.com.", "trailing dot"),
        ("ana@[192.168.0.1]", "IP literal"),
        ("ana@-example.com", "letters, digits, hyphens"),
        ("ana@exa_mple.com", "letters, digits, hyphens"),
        ("ana@example.123", "all digits"),
        (".ana@example.com", "dot"),
        ("ana.@example.com", "dot"),
        ("a..na@example.com", "dot"),
        ("a na@example.com", "not allowed"),
        ('"a na"@example.com', "not allowed"),
        ("ana,luis@example.com", "not allowed"),
        ("ana@example.com, luis@example.com", "not allowed"),
        ("a\u200bna@example.com", "not allowed"),  # zero-width space: a format character
        ("x" * 65 + "@example.com", "64 octets"),
        ("ana@" + "a" * 64 + ".com", "63 octets"),
        ("ana@" + ".".join(["a" * 60] * 5) + ".com", "253 octets"),
        ("Ana <ana@example.com", "local@domain"),
        ("Ana <ana@example.com>>", "'<' or '>'"),
        ("<Ana> <ana@example.com>", "'<' or '>'"),
        ("Ana\r\nBcc: all@example.com <ana@example.com>", "line break"),
        ("ana@example.com\nBcc: all@example.com", "line break"),
    ],
)
def test_invalid_addresses_are_refused_with_a_reason(value: str, why: str) -> None:
    with pytest.raises(InvalidEmail) as caught:
        normalize_address(value, field="to_address")
    assert caught.value.field == "to_address"
    assert why in caught.value.reason


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: everyone@example.com", "Hi\nthere", "Hi\rX"])
def test_a_subject_with_cr_or_lf_is_refused(subject: str) -> None:
    with pytest.raises(InvalidEmail) as caught:
        prepare(subject=subject)
    assert caught.value.field == "subject"
    assert "line break" in caught.value.reason


@pytest.mark.parametrize("sep", ["\x00", "\x85", "\u2028", "\u2029"])
def test_other_line_breaks_and_nul_in_a_header_are_refused(sep: str) -> None:
    with pytest.raises(InvalidEmail):
        check_header_value(f"a{sep}b", field="subject")


def test_header_injection_is_refused() -> None:
    check_header_value("<mailto:u@example.com>", field="subject")
    with pytest.raises(InvalidEmail, match="line break"):
        check_header_value("1\r\nBcc: x@example.com", field="subject")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"subject": ""}, "subject"),
        ({"subject": None}, "subject"),
        ({"subject": "x" * 999}, "subject"),
        ({"html": None, "text": None}, "body"),
        ({"html": "", "text": ""}, "body"),
        ({"to_address": None}, "to_address"),
        ({"from_address": "not an address"}, "from_address"),
    ],
)
def test_rows_missing_what_resend_requires_are_refused(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEmail) as caught:
        prepare(**overrides)
    assert caught.value.field == field


def test_null_sender_means_email_from_and_a_bad_email_from_is_named() -> None:
    assert prepare().from_ == DEFAULT_FROM
    assert prepare(from_address="Ventas <ventas@alianza.test>").from_ == (
        "Ventas <ventas@alianza.test>"
    )
    with pytest.raises(InvalidEmail) as caught:
        prepare(default_from="nobody")
    assert caught.value.field == "from_address (EMAIL_FROM)"


def test_html_only_or_text_only_is_enough_and_empty_parts_are_left_out() -> None:
    html_only = prepare(text="")
    assert (html_only.html, html_only.text) == ("<p>Hola</p>", None)
    assert "text" not in html_only.to_wire()
    text_only = prepare(html=None)
    assert (text_only.html, text_only.text) == (None, "Hola")


def test_size_limit_is_resends_40_mb_on_the_wire() -> None:
    assert MAX_EMAIL_BYTES == 40_000_000
    overhead = wire_size(prepare(html=None, text="x")) - 1
    fits = prepare(html=None, text="x" * (MAX_EMAIL_BYTES - overhead))
    assert wire_size(fits) == MAX_EMAIL_BYTES
    with pytest.raises(InvalidEmail) as caught:
        prepare(html=None, text="x" * (MAX_EMAIL_BYTES - overhead + 1))
    assert caught.value.field == "body"
    assert "40,000,000" in caught.value.reason


def test_size_counts_json_escaping_and_utf8() -> None:
    # A quote is two bytes in JSON (\"), "é" two bytes in UTF-8.
    assert wire_size(prepare(html=None, text='"' * 11)) > wire_size(
        prepare(html=None, text="a" * 11)
    )
    assert wire_size(prepare(html=None, text="é")) == wire_size(prepare(html=None, text="a")) + 1
    small = wire_size(prepare(html=None, text="a"))
    with pytest.raises(InvalidEmail):
        prepare(html=None, text="é", max_bytes=small)


# -- properties ------------------------------------------------------------------------------------

_ascii_local = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,10}){0,2}", fullmatch=True
)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_tld = st.from_regex(r"[a-z]{2,6}", fullmatch=True)


@given(local=_ascii_local, labels=st.lists(_label, min_size=1, max_size=3), tld=_tld)
def test_ascii_addresses_we_accept_the_emulator_accepts_too(
    local: str, labels: list[str], tld: str
) -> None:
    """What we pass Resend's rules pass too (checked against the emulator's copy of them)."""
    address = normalize_address(f"{local}@{'.'.join([*labels, tld])}", field="to_address")
    assert normalize_address(address, field="to_address") == address  # idempotent
    item = {"from": DEFAULT_FROM, "to": [address], "subject": "Hola", "text": "Hola"}
    assert validate_email(item, in_batch=True) is None


@given(
    before=st.text(max_size=20),
    brk=st.sampled_from(["\r", "\n", "\r\n"]),
    after=st.text(max_size=20),
)
def test_no_subject_with_a_line_break_is_ever_accepted(before: str, brk: str, after: str) -> None:
    with pytest.raises(InvalidEmail):
        prepare(subject=f"x{before}{brk}{after}")


@given(st.text(max_size=80))
def test_normalize_never_crashes_and_never_lets_a_line_break_through(value: str) -> None:
    try:
        result = normalize_address(value, field="to_address")
    except InvalidEmail:
        return
    assert not any(c in result for c in "\r\n\0")
    assert "@" in result


# -- internationalised domains: IDNA 2008 with UTS 46, never IDNA 2003 ----------------------------


@pytest.mark.parametrize(
    ("given_", "sent", "not_"),
    [
        # IDNA 2003 (Python's codec) maps ß to ss: faß.de would go to fass.de, another domain.
        ("u@faß.de", "u@xn--fa-hia.de", "u@fass.de"),
        # ... and final sigma to sigma: βόλος.com is not βόλοσ.com.
        ("u@βόλος.com", "u@xn--nxasmm1c.com", "u@xn--nxasmm1e.com"),
        # Full-width and ideographic forms are mapped (UTS 46), as a browser would.
        ("u@例え。テスト", "u@xn--r8jz45g.xn--zckzah", None),
        ("u@\uff22\u00dcCHER.de", "u@xn--bcher-kva.de", None),  # full-width B
        # Mixed scripts are a registry's policy, not an encoding's: sent to the domain as typed
        # (this one's second letter is a Cyrillic a), never to the Latin look-alike.
        ("u@p\u0430ypal.com", "u@xn--pypal-4ve.com", "u@paypal.com"),
    ],
)
def test_idn_domains_are_encoded_by_idna_2008(given_: str, sent: str, not_: str | None) -> None:
    assert normalize_address(given_, field="to_address") == sent
    assert sent != not_
    # The same rule for the sender.
    assert prepare(from_address=given_).from_ == sent


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        # IDNA 2003 drops joiners silently: a\u200db.com would become ab.com.
        ("a\u200db.com", "Joiner U+200D not allowed"),
        ("ab\u200cc.com", "Joiner U+200C not allowed"),
        ("a\u05d0.com", "direction"),  # Bidi rule: a right-to-left letter in a left-to-right label
        ("ü" * 60 + ".de", "too long"),  # 63 octets is the limit after encoding
        ("xn--a.com\u00e9", "IDNA 2008"),
    ],
)
def test_domains_idna_2008_cannot_encode_are_refused_with_a_reason(domain: str, why: str) -> None:
    with pytest.raises(InvalidEmail) as refused:
        normalize_address(f"u@{domain}", field="to_address")
    assert "IDNA 2008" in refused.value.reason
    assert why in refused.value.reason


def test_an_unencodable_recipient_is_a_dead_letter_reason_not_a_crash() -> None:
    with pytest.raises(InvalidEmail) as refused:
        prepare(to_address="ana@a\u200db.com")
    assert refused.value.field == "to_address"

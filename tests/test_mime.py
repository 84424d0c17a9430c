"""Inner and outer messages: protected headers, strict and bounded parsing."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pli.mime import (
    NEUTRAL_SUBJECT,
    PATIENT_HEADER,
    Attachment,
    Draft,
    ExternalPart,
    InnerMessage,
    MimeError,
    MimeLimits,
    build_inner_message,
    build_outer_message,
    complete_message,
    parse_inner_message,
    parse_outer_message,
)

NIR = "1 85 05 78 006 084 91"


def draft(**changes: object) -> Draft:
    values: dict[str, object] = {
        "from_address": "alice.martin@pli.test",
        "from_name": "Dr Alice Martin",
        "to": ["bob.durand@pli.test"],
        "cc": ["carol.petit@pli.test"],
        "subject": "Compte rendu — échographie",
        "body_text": "Bonjour,\nci-joint le compte rendu.\n",
        "patient_id": NIR,
        "attachments": [Attachment("cr.pdf", "application/pdf", b"%PDF-1.7 fake")],
    }
    values.update(changes)
    return Draft(**values)  # type: ignore[arg-type]


def test_round_trip_of_every_header_and_part() -> None:
    date = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
    data = build_inner_message(
        draft(
            sender="secretariat@pli.test",
            body_html="<p>Bonjour</p>",
            in_reply_to="<a1@pli.test>",
            references=["<a0@pli.test>", "<a1@pli.test>"],
        ),
        message_id="<m1@pli.test>",
        date=date,
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = parse_inner_message(data)
    assert message == InnerMessage(
        from_address="alice.martin@pli.test",
        sender="secretariat@pli.test",
        to=["bob.durand@pli.test"],
        cc=["carol.petit@pli.test"],
        subject="Compte rendu — échographie",
        date=date,
        message_id="<m1@pli.test>",
        body_text="Bonjour,\nci-joint le compte rendu.\n",
        body_html="<p>Bonjour</p>\n",  # set_content ends text with a newline
        patient_id="nir:185057800608491",
        in_reply_to="<a1@pli.test>",
        references=["<a0@pli.test>", "<a1@pli.test>"],
        attachments=[Attachment("cr.pdf", "application/pdf", b"%PDF-1.7 fake")],
    )


def test_external_parts_round_trip() -> None:
    external = ExternalPart(
        filename="irm.dcm",
        content_type="application/dicom",
        blob_id="ab" * 32,
        key=bytes(range(32)),
        size=123456,
        plaintext_size=123000,
        record_size=1 << 20,
    )
    data = build_inner_message(draft(attachments=[], external_parts=[external]))
    message = parse_inner_message(data)
    assert message.external_parts == [external]
    assert message.attachments == []


@pytest.mark.requirement("REQ-SUBJECT")
@pytest.mark.requirement("REQ-E2E")
def test_outer_message_shows_only_routing_and_a_neutral_subject() -> None:
    outer = build_outer_message(
        b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n",
        from_address="alice.martin@pli.test",
        to=["bob.durand@pli.test"],
    )
    headers, _ = parse_outer_message(outer)
    assert headers["Subject"] == NEUTRAL_SUBJECT
    assert headers[PATIENT_HEADER] is None
    assert b"chographie" not in outer
    assert b"185057800608491" not in outer


def test_bad_patient_identifier_is_refused() -> None:
    with pytest.raises(MimeError) as caught:
        build_inner_message(draft(patient_id="1 85 05 78 006 084 92"))
    assert caught.value.code == "bad_patient_id"


def test_header_injection_is_refused() -> None:
    with pytest.raises(MimeError) as caught:
        build_inner_message(draft(subject="Hello\r\nBcc: eve@evil.test"))
    assert caught.value.code == "bad_header"


@pytest.mark.parametrize("address", ["not-an-address", "a@b", "", "a@@b.test"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(MimeError) as caught:
        build_inner_message(draft(to=[address]))
    assert caught.value.code == "bad_address"


def valid() -> bytes:
    return build_inner_message(draft(), message_id="<m1@pli.test>")


@pytest.mark.parametrize(
    ("data", "limits", "code"),
    [
        (b"x" * 200, MimeLimits(max_bytes=100), "message_too_large"),
        (b"X-A: 1\r\n" * 120 + valid(), MimeLimits(), "too_many_headers"),
        (b"X-Long: " + b"a" * 9000 + b"\r\n" + valid(), MimeLimits(), "header_too_long"),
        (valid().replace(b"From: ", b"X-Old-From: ", 1), MimeLimits(), "missing_header"),
        (
            valid().replace(b"Message-ID: <m1@pli.test>", b"Message-ID: nope"),
            MimeLimits(),
            "bad_message_id",
        ),
        (b"From: a@pli.test\r\nFrom: b@pli.test\r\n" + valid(), MimeLimits(), "duplicate_header"),
        (valid(), MimeLimits(max_parts=2), "too_many_parts"),
        (valid(), MimeLimits(max_depth=0), "too_deep"),
    ],
)
def test_limits_and_malformed_input(data: bytes, limits: MimeLimits, code: str) -> None:
    with pytest.raises(MimeError) as caught:
        parse_inner_message(data, limits)
    assert caught.value.code == code


def test_truncated_multipart_is_malformed() -> None:
    data = valid()
    with pytest.raises(MimeError) as caught:
        parse_inner_message(data[: data.rindex(b"--")])
    assert caught.value.code in {"malformed_message", "missing_header"}


def nested(depth: int) -> bytes:
    head = b"From: a@pli.test\r\nTo: b@pli.test\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
    head += b"Message-ID: <n@pli.test>\r\nMIME-Version: 1.0\r\n"
    body = b"Content-Type: text/plain\r\n\r\nhi\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
            + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n"
        )  # fmt: skip
    return head + body


def test_nesting_depth_is_bounded() -> None:
    assert parse_inner_message(nested(3)).body_text.startswith("hi")
    with pytest.raises(MimeError) as caught:
        parse_inner_message(nested(40))
    assert caught.value.code == "too_deep"


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_hostile_bytes_give_a_message_or_a_typed_error(data: bytes) -> None:
    code = "parsed"
    try:
        parse_inner_message(data)
    except MimeError as error:
        code = error.code
    assert code


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_valid_messages_never_crash(data: st.DataObject) -> None:
    message = bytearray(valid())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(message) - 1))
        message[position] = data.draw(st.integers(0, 255))
    code = "parsed"
    try:
        parse_inner_message(bytes(message))
    except MimeError as error:
        code = error.code
    assert code


def test_complete_message_adds_missing_headers_and_parts() -> None:
    eml = b"From: alice.martin@pli.test\r\nTo: bob.durand@pli.test\r\nSubject: Hi\r\n\r\nBody\r\n"
    moved: list[Attachment] = []

    def externalise(attachment: Attachment) -> ExternalPart:
        moved.append(attachment)
        return ExternalPart(
            attachment.filename, attachment.content_type, "cd" * 32, b"k" * 32, 10, 9, 64
        )

    result = complete_message(
        eml,
        attachments=[
            Attachment("small.txt", "text/plain", b"s"),
            Attachment("big.bin", "application/octet-stream", b"B" * 100),
        ],
        externalise=externalise,
        threshold=50,
    )
    message = parse_inner_message(result)
    assert message.message_id.endswith("@pli.test>")
    assert [a.filename for a in message.attachments] == ["small.txt", "big.bin"]
    assert moved == []  # parts given as attachments are the caller's choice

    again = complete_message(result, externalise=externalise, threshold=50)
    reparsed = parse_inner_message(again)
    assert [a.filename for a in reparsed.attachments] == ["small.txt"]
    assert [p.filename for p in reparsed.external_parts] == ["big.bin"]
    assert moved[0].data == b"B" * 100

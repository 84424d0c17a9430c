"""The messaging JSON API against its rules on bad input, every endpoint at once.

1. Bad input answers a 4xx with a stable ``code`` and a translated message, never a 500.
2. A refusal changes nothing: no row of the messaging tables or of the audit journal,
   no file, nothing half-stored (a refused send or receipt is traced once, by its code).
3. What is not the caller's answers as what does not exist: in
   tests/test_messaging_review_identifiers.py.
4. No health data in the log records or the audit events these endpoints produce.

Personas of tests/test_messaging_api.py: A sends, B receives, D a colleague of B.
The cases already proved by tests/test_messaging_api.py and
tests/test_messaging_uploads.py are not repeated here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from pli.crypto import seal
from pli.mime import Attachment, Draft, build_inner_message
from pli.server.audit.models import AuditEvent, AuditPendingEvent
from pli.server.messaging.models import Message, MessageCopy
from pli.server.messaging.uploads import CHUNK_BYTES_MAX, MessageBlob, Upload
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
    A,
    B,
    C,
    World,
    a_to_b,
    encoded,
    letter,
    make_world,
    post_json,
    valid_nir,
)
from tests.test_messaging_review_identifiers import (
    MISSING_UPLOAD,
    Scene,
    journal,
    make_scene,
    refused_send,
    stored,
)
from tests.test_messaging_uploads import UPLOADS, ciphertext, upload


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


# --------------------------------------------------------------------------- rules 1 and 2


@dataclass(frozen=True)
class Case:
    name: str
    who: str
    method: str
    path: str
    status: int
    code: str
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: A refused send (a receipt is one): traced by its code, once per call.
    traced: bool = False


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _send_cases(world: World) -> list[Case]:
    envelope = encoded(a_to_b(world))
    good = {"from": A, "recipients": [B], "envelope": envelope}

    def send(name: str, status: int, code: str, body: bytes, **extra: Any) -> Case:
        return Case(f"send:{name}", "a", "post", MESSAGES, status, code, body, **extra)

    def bad(name: str, **changed: Any) -> Case:
        return send(name, 422, "bad_request", _json({**good, **changed}))

    middle = len(envelope) // 2
    return [
        send("not_json", 422, "bad_request", b'{"from": "' + A.encode()),
        send("text_plain", 422, "bad_request", _json(good), content_type="text/plain"),
        send("array", 422, "bad_request", _json([good])),
        bad("recipient_a_number", recipients=[B, 42]),
        bad("recipients_empty", recipients=[]),
        bad("recipients_1001", recipients=[f"x{n}@nulle-part.pli.test" for n in range(1001)]),
        bad("envelope_a_number", envelope=12),
        bad("envelope_null", envelope=None),
        bad("envelope_a_list", envelope=[envelope]),
        bad("from_a_number", **{"from": 1}),
        bad("patient_id_a_number", patient_id=int(valid_nir())),
        bad("nul_in_a_recipient", recipients=["dr.durand\x00@clinique-b.pli.test"]),
        bad("blobs_101", blobs=[f"upl_{n:032x}" for n in range(101)]),
        send(
            "recipients_1000",
            422,
            "too_many_recipients",
            _json({**good, "recipients": [f"x{n}@nulle-part.pli.test" for n in range(1000)]}),
            traced=True,
        ),
        send(
            "base64_cut",
            422,
            "envelope_malformed",
            _json({**good, "envelope": envelope[:-1]}),
            traced=True,
        ),
        send(
            "base64_not_ascii",
            422,
            "envelope_malformed",
            _json({**good, "envelope": envelope[:middle] + "é" + envelope[middle:]}),
            traced=True,
        ),
        send(
            "base64_garbage_inside",
            422,
            "envelope_malformed",
            _json({**good, "envelope": envelope[:middle] + "*\n" + envelope[middle:]}),
            traced=True,
        ),
        send(
            "in_reply_to_not_an_id",
            422,
            "in_reply_to_not_found",
            _json({**good, "in_reply_to": "../../msg"}),
            traced=True,
        ),
    ]


def _message_cases(world: World, scene: Scene) -> list[Case]:
    base = f"{MESSAGES}/{scene.message}"
    receipt = seal(letter(B, [A], subject="Lu : avis"), world.b_key, [world.a_key.certificate])
    blob = f"{base}/blobs/{scene.digest}"
    return [
        Case("read:not_json", "b", "post", f"{base}/read", 422, "bad_request", b"{"),
        Case(
            "read:receipt_a_number",
            "b",
            "post",
            f"{base}/read",
            422,
            "bad_request",
            b'{"receipt": 1}',
        ),
        Case(
            "read:text_plain",
            "b",
            "post",
            f"{base}/read",
            422,
            "bad_request",
            b'{"receipt": null}',
            content_type="text/plain",
        ),
        # Valid base64, but no CMS: refused by the send the receipt is (first read only).
        Case(
            "read:receipt_not_cms",
            "b",
            "post",
            f"{base}/read",
            422,
            "envelope_malformed",
            _json({"receipt": encoded(b"Lu le 3 mars.")}),
            traced=True,
        ),
        Case(
            "read:receipt_truncated",
            "b",
            "post",
            f"{base}/read",
            422,
            "envelope_malformed",
            _json({"receipt": encoded(receipt[: len(receipt) // 2])}),
            traced=True,
        ),
        Case("move:unknown", "b", "post", f"{base}/move", 422, "bad_folder", b'{"folder": "spam"}'),
        Case("move:a_list", "b", "post", f"{base}/move", 422, "bad_request", b'{"folder": []}'),
        Case("move:no_folder", "b", "post", f"{base}/move", 422, "bad_request", b"{}"),
        Case("move:no_body", "b", "post", f"{base}/move", 422, "bad_request"),
        Case("flag:null", "b", "post", f"{base}/flag", 422, "bad_request", b'{"flagged": null}'),
        Case("flag:a_number", "b", "post", f"{base}/flag", 422, "bad_request", b'{"flagged": 1}'),
        Case("flag:not_json", "b", "post", f"{base}/flag", 422, "bad_request", b"flagged"),
        Case(
            "envelope:another_persons_mailbox",
            "b",
            "get",
            f"{base}/envelope?mailbox={C}",
            404,
            "not_found",
        ),
        Case(
            "list:folder_in_capitals",
            "b",
            "get",
            f"/api/mailboxes/{B}/messages?folder=INBOX",
            422,
            "bad_request",
        ),
        # Refused before the download is traced: no messages.opened event.
        Case(
            "blob:from_the_end",
            "b",
            "get",
            blob,
            416,
            "range_not_satisfiable",
            headers={"HTTP_RANGE": f"bytes={scene.size}-"},
        ),
        Case(
            "blob:no_byte",
            "b",
            "get",
            blob,
            416,
            "range_not_satisfiable",
            headers={"HTTP_RANGE": "bytes=-0"},
        ),
        # The digest of another message's blob: not this message's.
        Case(
            "blob:of_another_message",
            "b",
            "get",
            f"{base}/blobs/{scene.digest_to_d}",
            404,
            "not_found",
        ),
    ]


def _upload_cases(scene: Scene) -> list[Case]:
    sha = hashlib.sha256(b"x").hexdigest()

    def new(name: str, body: bytes, content_type: str = "application/json") -> Case:
        return Case(f"create:{name}", "a", "post", UPLOADS, 422, "bad_request", body, content_type)

    def chunk(name: str, upload_id: str, offset: str, data: bytes, status: int, code: str) -> Case:
        return Case(
            f"chunk:{name}",
            "a",
            "put",
            f"{UPLOADS}/{upload_id}?offset={offset}",
            status,
            code,
            data,
            "application/octet-stream",
        )

    receiving, complete = scene.receiving, scene.complete
    return [
        new("size_a_float", _json({"size": 1.5, "sha256": sha})),
        new("size_a_boolean", _json({"size": True, "sha256": sha})),
        new("size_negative", _json({"size": -1, "sha256": sha})),
        new("no_digest", _json({"size": 1})),
        new("digest_too_short", _json({"size": 1, "sha256": sha[:-1]})),
        new("nul_in_the_digest", _json({"size": 1, "sha256": sha[:-1] + "\x00"})),
        new("not_json", b'{"size": 1,'),
        new("array", _json([{"size": 1, "sha256": sha}])),
        new("text_plain", _json({"size": 1, "sha256": sha}), "text/plain"),
        chunk("skips", receiving, "60", b"x" * 10, 409, "upload_offset_mismatch"),
        chunk("overlaps", receiving, "39", b"x" * 10, 409, "upload_offset_mismatch"),
        chunk("past_the_size", receiving, "40", b"x" * 61, 422, "upload_beyond_size"),
        chunk("offset_20_digits", receiving, "9" * 20, b"x", 422, "bad_request"),
        chunk("offset_negative", receiving, "-40", b"x", 422, "bad_request"),
        chunk("after_completion", complete, "100", b"x", 409, "upload_offset_mismatch"),
        chunk("completed_from_0", complete, "0", b"x" * 100, 409, "upload_offset_mismatch"),
        chunk("completed_past_its_end", complete, "101", b"", 409, "upload_offset_mismatch"),
        Case(
            "chunk:length_not_a_number",
            "a",
            "put",
            f"{UPLOADS}/{receiving}?offset=40",
            411,
            "upload_length_required",
            b"x",
            "application/octet-stream",
            {"CONTENT_LENGTH": "x"},
        ),
        Case(
            "chunk:chunked",
            "a",
            "put",
            f"{UPLOADS}/{receiving}?offset=40",
            411,
            "upload_length_required",
            b"",
            "application/octet-stream",
            {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"},
        ),
        Case(
            "chunk:announced_too_large",
            "a",
            "put",
            f"{UPLOADS}/{receiving}?offset=40",
            413,
            "upload_chunk_too_large",
            b"x",
            "application/octet-stream",
            {"CONTENT_LENGTH": str(CHUNK_BYTES_MAX + 1)},
        ),
        Case("delete:missing", "a", "delete", f"{UPLOADS}/{MISSING_UPLOAD}", 404, "not_found"),
    ]


def call(client: Client, case: Case, language: str) -> Any:
    extra: dict[str, Any] = {**case.headers, "HTTP_ACCEPT_LANGUAGE": language}
    if case.method in ("post", "put"):
        method = client.post if case.method == "post" else client.put
        return method(case.path, data=case.body, content_type=case.content_type, **extra)
    return getattr(client, case.method)(case.path, **extra)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.requirement("REQ-TRACE")
def test_every_refusal_has_a_stable_code_a_translated_message_and_changes_nothing(
    world: World,
) -> None:
    scene = make_scene(world)
    clients = {"a": world.client(world.a), "b": world.client(world.b)}
    cases = _send_cases(world) + _message_cases(world, scene) + _upload_cases(scene)
    for case in cases:
        before, logged = stored(world), journal()
        answers = {language: call(clients[case.who], case, language) for language in ("fr", "en")}
        for language, answer in answers.items():
            assert answer.status_code == case.status, (case.name, language, answer.content)
            assert answer["Content-Type"].startswith("application/json"), case.name
            body = answer.json()
            assert set(body) == {"code", "message", "details"}, case.name
            assert body["code"] == case.code, (case.name, body)
            assert body["message"] and "Traceback" not in answer.content.decode(), case.name
        french, english = (answers[language].json() for language in ("fr", "en"))
        assert french["message"] != english["message"], (case.name, french["message"])
        assert french["details"] == english["details"], case.name
        if case.status == 416:
            assert answers["fr"]["Content-Range"] == f"bytes */{scene.size}"
        assert stored(world) == before, case.name
        traced = [refused_send(case.code)] * 2 if case.traced else []
        assert journal() == logged + traced, case.name
    # The scene is as it was: the message unread, the uploads where they were.
    assert not MessageCopy.objects.get(message__public_id=scene.message, mailbox__address=B).read
    assert [*Upload.objects.order_by("pk").values_list("public_id", "received", "state")] == [
        (scene.receiving, 40, "receiving"),
        (scene.complete, 100, "complete"),
    ]


@pytest.mark.django_db
@pytest.mark.requirement("REQ-E2E")
def test_an_envelope_in_base64_with_line_breaks_and_spaces_is_stored_as_sealed(
    world: World,
) -> None:
    """RFC 2045 §6.8 lines of 76 characters (``base64`` tools write them), CRLF, tabs."""
    envelope = a_to_b(world)
    text = encoded(envelope)
    wrapped = "\r\n".join(text[n : n + 76] for n in range(0, len(text), 76))
    body = {"from": A, "recipients": [B], "envelope": f" \t{wrapped}\n"}
    sent = post_json(world.client(world.a), MESSAGES, body)
    assert sent.status_code == 201, sent.content
    fetched = world.client(world.b).get(f"{MESSAGES}/{sent.json()['id']}/envelope")
    assert fetched.content == envelope


# --------------------------------------------------------------------------- rule 4

PATIENT = "Jeanne Dupont-Lagarde"
SUBJECT = "IRM lombaire de Jeanne Dupont-Lagarde"
BODY = "Mme Jeanne Dupont-Lagarde, née le 12/03/1962 : hernie discale L4-L5.\n"
FILE_NAME = "irm-dupont-lagarde.pdf"


def _logged_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
    return text + (record.exc_text or "") + (record.stack_info or "")


@pytest.mark.django_db
@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.requirement("REQ-SUBJECT")
@pytest.mark.requirement("REQ-AT-REST")
def test_no_health_data_in_the_logs_or_the_audit_events_of_the_api(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    nir = valid_nir()
    caplog.set_level(logging.DEBUG)
    alice, bob = world.client(world.a), world.client(world.b)
    inner = build_inner_message(
        Draft(
            from_address=A,
            to=[B],
            subject=SUBJECT,
            body_text=BODY,
            patient_id=nir,
            attachments=[Attachment(FILE_NAME, "application/pdf", b"%PDF-1.7\n" + b"0" * 500)],
        )
    )
    envelope = encoded(seal(inner, world.a_key, [world.b_key.certificate]))
    data = ciphertext(700)
    attached = upload(alice, data)
    good = {"from": A, "recipients": [B], "envelope": envelope, "patient_id": nir}
    answers = [post_json(alice, MESSAGES, {**good, "blobs": [attached]})]
    message_id = answers[0].json()["id"]
    base = f"{MESSAGES}/{message_id}"
    # Sealed to the ward, not to A: refused, as any message not sealed to its recipient.
    mdn = seal(
        letter(B, [A], subject=f"Lu : {SUBJECT}", body=BODY),
        world.b_key,
        [world.ward_key.certificate],
    )
    blob = f"{base}/blobs/{hashlib.sha256(data).hexdigest()}"
    answers += [
        # Refusals that carry health data in what they refuse.
        post_json(alice, MESSAGES, {**good, "patient_id": PATIENT[:64]}),
        post_json(alice, MESSAGES, {**good, "patient_id": int(nir)}),
        post_json(alice, MESSAGES, {**good, "subject": SUBJECT, "filename": FILE_NAME}),
        post_json(alice, MESSAGES, {**good, "recipients": ["jeanne.dupont-lagarde@patients.fr"]}),
        post_json(alice, MESSAGES, {**good, "envelope": encoded(BODY.encode())}),
        post_json(bob, f"{base}/read", {"receipt": encoded(BODY.encode())}),
        post_json(bob, f"{base}/read", {"receipt": encoded(mdn)}),
        post_json(bob, f"{base}/move", {"folder": SUBJECT[:16]}),
        bob.get(f"/api/mailboxes/{B}/messages", {"folder": PATIENT}),
        post_json(alice, UPLOADS, {"size": 10, "sha256": FILE_NAME, "name": FILE_NAME}),
        # And what a reading goes through.
        bob.get(f"/api/mailboxes/{B}/messages"),
        bob.get(base),
        bob.get(f"{base}/envelope"),
        bob.get(blob, HTTP_RANGE="bytes=100-"),
        post_json(bob, f"{base}/read", {}),
        post_json(bob, f"{base}/flag", {"flagged": True}),
        post_json(bob, f"{base}/move", {"folder": "archive"}),
    ]
    # A blob lost from the store: logged, by its identifiers only.
    stored_blob = MessageBlob.objects.get(message__public_id=message_id)
    (world.blob_dir / stored_blob.blob_id[:2] / stored_blob.blob_id).unlink()
    answers += [bob.get(blob), bob.delete(base), bob.delete(base)]

    statuses = [answer.status_code for answer in answers]
    assert statuses == [201, *[422] * 10, 200, 200, 200, 206, 200, 200, 200, 503, 200, 200]
    assert answers[1].json()["code"] == "bad_patient_id"
    assert answers[7].json()["code"] == "not_encrypted_to_recipient"
    # Nothing a hexadecimal identifier could hold by chance (a digest may contain "1962").
    secrets_ = [nir, PATIENT, "Dupont", SUBJECT, "hernie", FILE_NAME, "12/03/1962"]
    for answer in answers[1:11]:  # a refusal never echoes what it refused as a value
        text = answer.content.decode()
        assert "Traceback" not in text
        if answer.json()["code"] != "recipient_not_in_directory":  # the address, as given
            assert not [s for s in secrets_ if s.lower() in text.lower()], text
    assert not [r for r in caplog.records if r.getMessage().startswith("Internal Server Error")]
    assert any("blob" in _logged_text(r) for r in caplog.records if r.levelno >= logging.ERROR)
    for record in caplog.records:
        text = _logged_text(record).lower()
        assert not [s for s in secrets_ if s.lower() in text], (record.name, text)
        assert "patients.fr" not in text, (record.name, text)

    events = [
        *AuditEvent.objects.values_list("action", "target", "detail", "user_agent"),
        *AuditPendingEvent.objects.values_list("action", "target", "detail", "user_agent"),
    ]
    actions = {event[0] for event in events}
    assert {
        "messages.sent",
        "messages.delivered",
        "messages.opened",
        "messages.read",
        "messages.flagged",
        "messages.moved",
        "messages.deleted",
    } <= actions
    patient_key = Message.objects.get(public_id=message_id).patient_key
    assert patient_key
    for event in events:
        text = " ".join(event).lower()
        assert not [s for s in [*secrets_, patient_key] if s.lower() in text], event
        assert "patients.fr" not in text, event

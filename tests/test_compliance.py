"""The opposition register (REQ-OPPOSITION): keys, actions, API personas, admin console.

Personas: the operator admin (``alice``) and the DPO (``dora``) may; a
professional (``bob``) and support staff get ``403 not_allowed`` whatever
they send; an outsider (``charlie``, not signed in) gets 401.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client, override_settings
from django.utils import timezone, translation

from pli.identifiers import parse_nir
from pli.policy import Finding, FindingCode, Severity, check_recipients, check_subject
from pli.server.accounts.models import Role, User
from pli.server.audit.models import AuditEvent
from pli.server.compliance.actions import (
    check_not_opposed,
    do_check_opposition,
    do_lift_opposition,
    do_record_opposition,
    is_opposed,
    parse_patient_id,
    patient_key,
)
from pli.server.compliance.errors import ComplianceError
from pli.server.compliance.findings import finding_message
from pli.server.compliance.models import Opposition
from tests.accounts_support import make_account, signed_in

opposition = pytest.mark.requirement("REQ-OPPOSITION")

NIR = "185057800608491"
NIR_SPACED = "1 85 05 78 006 084 91"
NIR_CORSICAN = "255082A01234592"
NISS = "85073003328"
NISS_DOTTED = "85.07.30-033.28"
RPPS = "10001234565"

URL = "/api/compliance/oppositions"


def post(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


# --- the patient key (no database) ----------------------------------------------------------------


@opposition
def test_the_key_is_a_keyed_hash_of_the_normalised_number() -> None:
    key = patient_key(NIR)
    assert len(key) == 64 and int(key, 16) >= 0
    assert patient_key(NIR_SPACED) == patient_key(parse_nir(NIR)) == key
    assert patient_key(NISS_DOTTED) == patient_key(NISS)
    assert patient_key(NIR_CORSICAN.lower()) == patient_key(NIR_CORSICAN)
    assert len({patient_key(NIR), patient_key(NIR_CORSICAN), patient_key(NISS)}) == 3
    assert NIR not in key and NISS not in key


@opposition
def test_the_key_depends_on_the_server_secret() -> None:
    key = patient_key(NIR)
    with override_settings(SECRET_KEY="another-secret-key-" + "y" * 32):
        assert patient_key(NIR) != key


@opposition
@pytest.mark.parametrize(
    "value",
    [RPPS, "185057800608492", "1850578006084", "8507300332", "", "x" * 65, "hello", NIR + " "],
)
def test_anything_but_a_valid_nir_or_niss_is_a_bad_patient_id(value: str) -> None:
    if value == NIR + " ":  # surrounding spaces are only typing
        assert parse_patient_id(value).value == NIR
        return
    with pytest.raises(ComplianceError) as caught:
        patient_key(value)
    assert caught.value.code == "bad_patient_id"
    assert "NIR/INS" in caught.value.message


# --- the actions ----------------------------------------------------------------------------------


def officers() -> tuple[User, User]:
    admin, _ = make_account("alice.admin@operateur.pli.test", role=Role.OPERATOR_ADMIN)
    dpo, _ = make_account("dora.dpo@operateur.pli.test", role=Role.DPO)
    return admin, dpo


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


@opposition
@pytest.mark.django_db
def test_record_check_and_lift_an_opposition() -> None:
    admin, dpo = officers()
    assert not is_opposed(NIR)
    recorded, created = do_record_opposition(admin, NIR_SPACED, None)
    assert created and recorded.active
    assert recorded.patient_key == patient_key(NIR)
    assert recorded.kind == "nir" and recorded.reason == "patient_request"
    assert recorded.recorded_by == admin and recorded.recorded_by_role == Role.OPERATOR_ADMIN
    assert is_opposed(NIR) and is_opposed(NIR_SPACED)
    assert not is_opposed(NISS)

    # Recording again: the opposition already stands; nothing new is written.
    again, created = do_record_opposition(dpo, NIR, None)
    assert not created and again.pk == recorded.pk
    assert Opposition.objects.count() == 1

    assert do_check_opposition(dpo, NIR, None) == recorded
    lifted = do_lift_opposition(dpo, NIR, None, reason="recorded_in_error")
    assert lifted.pk == recorded.pk and not lifted.active
    assert lifted.lifted_by == dpo and lifted.lifted_by_role == Role.DPO
    assert lifted.lift_reason == "recorded_in_error"
    assert not is_opposed(NIR)
    assert do_check_opposition(dpo, NIR, None) is None

    with pytest.raises(ComplianceError) as caught:
        do_lift_opposition(dpo, NIR, None)
    assert caught.value.code == "not_opposed"

    # The patient opposes again later: a new row; the history stays.
    renewed, created = do_record_opposition(dpo, NIR, None, kind="ins")
    assert created and renewed.pk != recorded.pk and renewed.kind == "ins"
    assert Opposition.objects.count() == 2 and is_opposed(NIR)


@opposition
@pytest.mark.django_db
def test_each_change_is_audited_with_ids_only() -> None:
    admin, dpo = officers()
    recorded, _ = do_record_opposition(admin, NISS_DOTTED, None, reason="representative_request")
    do_record_opposition(admin, NISS, None)  # no change, no event
    do_check_opposition(dpo, NISS, None)
    do_lift_opposition(dpo, NISS, None)
    do_check_opposition(dpo, NISS, None)

    (rec,) = events("oppositions.recorded")
    assert rec.target == f"opposition:{recorded.pk}"
    assert json.loads(rec.detail) == {"kind": "niss", "reason": "representative_request"}
    assert (rec.actor_id, rec.actor_role, rec.outcome) == (admin.pk, "operator_admin", "success")
    (lift,) = events("oppositions.lifted")
    assert lift.target == f"opposition:{recorded.pk}" and lift.actor_role == "dpo"
    assert json.loads(lift.detail) == {"reason": "patient_withdrew"}
    checked = events("oppositions.checked")
    assert [json.loads(e.detail)["result"] for e in checked] == ["opposed", "not_opposed"]
    assert [e.target for e in checked] == [f"opposition:{recorded.pk}", "opposition"]
    key = patient_key(NISS)
    for event in AuditEvent.objects.all():
        text = " ".join(str(v) for v in event.__dict__.values())
        assert NISS not in text and key[:12] not in text


@opposition
@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.PROFESSIONAL, Role.SUPPORT])
def test_other_roles_are_refused_before_the_identifier_is_read(role: str) -> None:
    user, _ = make_account(f"someone.{role}@pli.test", role=role)
    for value in (NIR, "not an identifier"):
        for call in (
            lambda v: do_record_opposition(user, v, None),
            lambda v: do_lift_opposition(user, v, None),
            lambda v: do_check_opposition(user, v, None),
        ):
            with pytest.raises(ComplianceError) as caught:
                call(value)
            assert caught.value.code == "not_allowed"
    assert not Opposition.objects.exists()
    denied = AuditEvent.objects.filter(outcome="denied", actor_id=user.pk)
    assert sorted(denied.values_list("action", flat=True)) == sorted(
        ["oppositions.recorded", "oppositions.lifted", "oppositions.checked"] * 2
    )
    assert set(denied.values_list("target", flat=True)) == {"opposition"}


@opposition
@pytest.mark.django_db
def test_the_send_path_refuses_an_opposed_patient_and_says_why() -> None:
    admin, _ = officers()
    assert check_not_opposed(NIR) == patient_key(NIR)
    do_record_opposition(admin, NIR, None)
    with translation.override("fr"), pytest.raises(ComplianceError) as caught:
        check_not_opposed(NIR_SPACED)
    assert caught.value.code == "patient_opposed"
    assert "courrier postal" in caught.value.message
    with pytest.raises(ComplianceError) as bad:
        check_not_opposed(RPPS)
    assert bad.value.code == "bad_patient_id"


@opposition
@pytest.mark.django_db
def test_a_mismatched_declared_kind_or_reason_is_refused() -> None:
    admin, _ = officers()
    for kwargs in ({"kind": "niss"}, {"reason": "because"}):
        with pytest.raises(ComplianceError) as caught:
            do_record_opposition(admin, NIR, None, **kwargs)
        assert caught.value.code in {"bad_patient_id", "bad_reason"}
    with pytest.raises(ComplianceError):
        do_record_opposition(admin, NISS, None, kind="ins")
    assert not Opposition.objects.exists()


@opposition
@pytest.mark.django_db(transaction=True)
def test_the_database_allows_one_active_opposition_per_patient() -> None:
    admin, _ = officers()
    recorded, _ = do_record_opposition(admin, NIR, None)
    with pytest.raises(IntegrityError), transaction.atomic():
        Opposition.objects.create(
            patient_key=recorded.patient_key,
            kind="nir",
            reason="patient_request",
            recorded_at=timezone.now(),
        )
    # A lifted one must say why, an active one must not.
    with pytest.raises(IntegrityError), transaction.atomic():
        Opposition.objects.filter(pk=recorded.pk).update(lifted_at=timezone.now())


@opposition
@pytest.mark.django_db
def test_the_database_holds_no_identifier_in_clear() -> None:
    admin, dpo = officers()
    do_record_opposition(admin, NIR_SPACED, None)
    do_record_opposition(admin, NIR_CORSICAN, None, kind="ins")
    do_record_opposition(dpo, NISS_DOTTED, None)
    do_lift_opposition(dpo, NISS, None)
    table = connection.ops.quote_name(Opposition._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - our own table name
        rows = cursor.fetchall()
    assert len(rows) == 3
    dump = " ".join(str(value) for row in rows for value in row).upper()
    for clear in (NIR, NIR[:13], NIR_SPACED, NIR_CORSICAN, NIR_CORSICAN[:13], NISS, NISS_DOTTED):
        assert clear.upper() not in dump
    audit = " ".join(
        str(value) for event in AuditEvent.objects.values_list() for value in event
    ).upper()
    for clear in (NIR, NIR[:13], NIR_CORSICAN, NISS):
        assert clear not in audit


# --- the API, three personas ----------------------------------------------------------------------


@pytest.fixture
def personas(db: None) -> dict[str, Client]:
    admin, dpo = officers()
    professional, _ = make_account("bob.durand@clinique-b.pli.test", organisation="Clinique B")
    return {
        "admin": signed_in(admin),
        "dpo": signed_in(dpo),
        "professional": signed_in(professional),
        "outsider": Client(),
    }


@opposition
@pytest.mark.django_db
def test_officers_record_check_and_lift_through_the_api(personas: dict[str, Client]) -> None:
    admin, dpo = personas["admin"], personas["dpo"]
    created = post(admin, URL, {"patient_id": NIR_SPACED})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["opposed"] is True and body["kind"] == "nir"
    assert body["key_prefix"] == patient_key(NIR)[:12]
    assert body["reason"] == "patient_request"
    assert NIR not in created.content.decode()

    again = post(dpo, URL, {"patient_id": NIR, "reason": "representative_request"})
    assert again.status_code == 200 and again.json()["recorded_at"] == body["recorded_at"]

    check = post(dpo, f"{URL}/check", {"patient_id": NIR})
    assert check.status_code == 200 and check.json()["opposed"] is True

    lifted = post(dpo, f"{URL}/lift", {"patient_id": NIR, "reason": "patient_withdrew"})
    assert lifted.status_code == 200
    assert lifted.json()["opposed"] is False and lifted.json()["lift_reason"] == "patient_withdrew"

    assert post(admin, f"{URL}/check", {"patient_id": NIR}).json() == {
        "opposed": False,
        "key_prefix": None,
        "kind": None,
        "reason": None,
        "recorded_at": None,
        "lifted_at": None,
        "lift_reason": None,
    }
    not_opposed = post(admin, f"{URL}/lift", {"patient_id": NIR})
    assert not_opposed.status_code == 409 and not_opposed.json()["code"] == "not_opposed"
    assert len(events("oppositions.recorded")) == 1
    assert len(events("oppositions.lifted")) == 1


@opposition
@pytest.mark.django_db
def test_a_professional_is_refused_the_same_way_whatever_the_body(
    personas: dict[str, Client],
) -> None:
    do_record_opposition(User.objects.get(role=Role.OPERATOR_ADMIN), NIR, None)
    professional = personas["professional"]
    answers = set()
    for path in (URL, f"{URL}/lift", f"{URL}/check"):
        for patient_id in (NIR, NISS, "garbage"):
            response = post(professional, path, {"patient_id": patient_id})
            assert response.status_code == 403, (path, response.content)
            answers.add(response.content)
    assert len(answers) == 1
    assert json.loads(answers.pop())["code"] == "not_allowed"
    assert is_opposed(NIR) and Opposition.objects.count() == 1


@opposition
@pytest.mark.django_db
def test_an_outsider_gets_401(personas: dict[str, Client]) -> None:
    for path in (URL, f"{URL}/lift", f"{URL}/check"):
        assert post(personas["outsider"], path, {"patient_id": NIR}).status_code == 401
    assert not Opposition.objects.exists()


@opposition
@pytest.mark.django_db
def test_bad_input_gets_a_stable_code_and_changes_nothing(personas: dict[str, Client]) -> None:
    admin = personas["admin"]
    with translation.override("fr"):
        bad = post(admin, URL, {"patient_id": RPPS})
    assert bad.status_code == 422
    assert bad.json()["code"] == "bad_patient_id" and "NISS" in bad.json()["message"]
    mismatch = post(admin, URL, {"patient_id": NIR, "kind": "niss"})
    assert mismatch.status_code == 422 and mismatch.json()["code"] == "bad_patient_id"
    for body in (
        {"patient_id": NIR, "name": "Dupont"},  # unknown fields are rejected
        {"patient_id": 185057800608491},  # strict: a number is not a string
        {"patient_id": NIR, "reason": "because"},
        {"patient_id": "1" * 65},
        {},
    ):
        assert post(admin, URL, body).status_code == 422, body
    assert not Opposition.objects.exists()


@pytest.mark.django_db
def test_the_endpoints_are_in_the_openapi_schema() -> None:
    paths = Client().get("/api/openapi.json").json()["paths"]
    for path in (URL, f"{URL}/lift", f"{URL}/check"):
        assert "post" in paths[path]


# --- the admin console ----------------------------------------------------------------------------

ADMIN = "/admin/compliance/opposition/"


@opposition
@pytest.mark.django_db
def test_officers_record_and_lift_in_the_console_and_see_key_prefixes_only() -> None:
    _admin, dpo = officers()
    console = signed_in(dpo)
    form = console.get(f"{ADMIN}add/")
    assert form.status_code == 200 and b"patient_id" in form.content

    refused = console.post(f"{ADMIN}add/", {"patient_id": RPPS, "reason": "patient_request"})
    assert refused.status_code == 200 and not Opposition.objects.exists()

    done = console.post(
        f"{ADMIN}add/",
        {"patient_id": NIR_SPACED, "declared_kind": "ins", "reason": "patient_request"},
    )
    assert done.status_code == 302 and done["Location"] == ADMIN
    recorded = Opposition.objects.get()
    assert recorded.kind == "ins" and recorded.recorded_by == dpo

    listing = console.get(ADMIN).content.decode()
    assert recorded.patient_key[:12] in listing
    assert recorded.patient_key not in listing and NIR not in listing
    assert "Délégué à la protection des données" in listing
    assert f"{ADMIN}lift/" in listing
    detail = console.get(f"{ADMIN}{recorded.pk}/change/").content.decode()
    assert recorded.patient_key[:12] in detail and recorded.patient_key not in detail

    lift_form = console.get(f"{ADMIN}lift/")
    assert lift_form.status_code == 200
    not_opposed = console.post(f"{ADMIN}lift/", {"patient_id": NISS, "reason": "patient_withdrew"})
    assert not_opposed.status_code == 200
    assert "Aucune opposition en cours" in not_opposed.content.decode()
    lifted = console.post(f"{ADMIN}lift/", {"patient_id": NIR, "reason": "patient_withdrew"})
    assert lifted.status_code == 302
    recorded.refresh_from_db()
    assert not recorded.active and recorded.lifted_by == dpo
    prefix = recorded.patient_key[:12]
    assert prefix in console.get(f"{ADMIN}?active=no").content.decode()
    assert prefix not in console.get(f"{ADMIN}?active=yes").content.decode()

    assert [e.actor_id for e in events("oppositions.recorded")] == [dpo.pk]
    assert [e.actor_id for e in events("oppositions.lifted")] == [dpo.pk]
    # Nothing is edited or deleted from the console.
    assert console.post(f"{ADMIN}{recorded.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Opposition.objects.count() == 1


@opposition
@pytest.mark.django_db
def test_the_console_register_is_closed_to_other_roles() -> None:
    support, _ = make_account("sam.support@operateur.pli.test", role=Role.SUPPORT)
    professional, _ = make_account("bob.durand@clinique-b.pli.test")
    staff = signed_in(support)
    for path in (ADMIN, f"{ADMIN}add/", f"{ADMIN}lift/"):
        assert staff.get(path).status_code == 403, path
    assert (
        staff.post(f"{ADMIN}add/", {"patient_id": NIR, "reason": "patient_request"}).status_code
        == 403
    )
    # Not staff: the console sends them to the login page.
    assert signed_in(professional).get(ADMIN).status_code == 302
    assert not Opposition.objects.exists()


# --- the server's words for policy findings -------------------------------------------------------


@pytest.mark.requirement("REQ-SUBJECT")
@pytest.mark.requirement("REQ-FEW-RECIPIENTS")
def test_the_server_translates_findings_with_the_policy_s_french_words() -> None:
    findings = [
        *check_subject(f"Dupont {NIR} et {NISS}, 1850578006084", patient_names=["Dupont"]),
        *check_recipients(["a@pli.test", "A@pli.test", "b@pli.test"], 1),
        *check_recipients([], 1),
    ]
    assert {f.code for f in findings} == set(FindingCode)
    with translation.override("fr"):
        for finding in findings:
            assert finding_message(finding) == finding.message_fr
    refusal = Finding(FindingCode.TOO_MANY_RECIPIENTS, Severity.REFUSE, {"count": 3, "limit": 2})
    with translation.override("fr"):
        assert "(3, au plus 2)" in finding_message(refusal)

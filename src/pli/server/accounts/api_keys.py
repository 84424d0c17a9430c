"""JSON API of key custody: the account's certificates, and workstation certificate requests.

``POST /api/accounts/keys/certificate-request`` is how the ``pli`` client gets a
certificate for a key it made itself (DESIGN "Key custody", workstation): the
server receives a CSR and answers with the certificate; it never sees the
private key. Only for the caller's own personal mailbox: a request naming any
other address answers 404 exactly like an unknown one. Registering a key for a
mailbox decides who can read its mail, so it needs a recent authentication,
like the other sensitive actions.

``GET /api/accounts/keys`` lists the caller's mailboxes and certificates and
where each key rests; no key material.
"""

from __future__ import annotations

import base64
import datetime as dt

from django.http import HttpRequest
from django.utils.translation import gettext as _
from ninja import Field, Router, Status
from ninja.security import django_auth

from pli.crypto import certificate_pem
from pli.server.accounts.custody import (
    CustodyError,
    do_issue_workstation_certificate,
    key_states,
    member_wrapped_keys,
    vault_unlocked,
)
from pli.server.accounts.operator_ca import trust_anchor
from pli.server.accounts.session_auth import signed_in_user
from pli.server.accounts.sessions import recently_authenticated
from pli.server.validation import StrictSchema

# An authenticated session (CSRF on unsafe methods) for every endpoint, whatever the API's default.
router = Router(tags=["accounts"], auth=django_auth)

#: A PEM CSR for an RSA-4096 key is about 1.7 kB; anything far larger is not one.
MAX_CSR_LENGTH = 16 * 1024
_STATUS = {
    "mailbox_not_found": 404,
    "reauthentication_required": 403,
    "ca_not_configured": 503,
}


class _Strict(StrictSchema):
    pass


class CertificateRequestIn(_Strict):
    #: PKCS#10 (RFC 2986) in PEM, naming the caller's personal mailbox address.
    csr: str = Field(max_length=MAX_CSR_LENGTH)


class CertificateIssuedOut(_Strict):
    address: str
    certificate: str
    #: The operator CA's root, to install beside the certificate (``pli keys install --chain``).
    ca_certificate: str
    serial: str
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime


class CertificateStateOut(_Strict):
    serial: str
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    revoked: bool
    #: vault (sealed on the server), workstation (the key never came here),
    #: member (a shared mailbox's key wrapped to you), none (not wrapped to you).
    custody: str


class MailboxKeysOut(_Strict):
    address: str
    kind: str
    #: owner, or your membership role (member, manager, substitute).
    part: str
    certificates: list[CertificateStateOut]


class KeysOut(_Strict):
    custody: str
    vault_unlocked: bool
    mailboxes: list[MailboxKeysOut]


class SharedKeyOut(_Strict):
    #: The shared mailbox's certificate (PEM) this key belongs to.
    certificate: str
    fingerprint: str
    #: False for a key rotated out (it still opens the mail sealed before).
    current: bool
    #: base64 of a CMS EnvelopedData holding the PKCS#8 key, wrapped to your own
    #: certificates: only your key opens it (``openssl cms -decrypt`` too).
    wrapped_key: str


class SharedKeysOut(_Strict):
    address: str
    keys: list[SharedKeyOut]


class ErrorOut(_Strict):
    code: str
    message: str


def _error(failure: CustodyError) -> Status[ErrorOut]:
    return Status(
        _STATUS.get(failure.code, 422), ErrorOut(code=failure.code, message=failure.message)
    )


@router.get("/keys", response=KeysOut, summary="Mes certificats et la garde de mes clés")
def list_keys(request: HttpRequest) -> KeysOut:
    user = signed_in_user(request)
    return KeysOut(
        custody=user.custody,
        vault_unlocked=vault_unlocked(request),
        mailboxes=[
            MailboxKeysOut(
                address=mailbox.address,
                kind=mailbox.kind,
                part=part,
                certificates=[
                    CertificateStateOut(
                        serial=state.serial,
                        fingerprint=state.fingerprint,
                        not_before=state.not_before,
                        not_after=state.not_after,
                        revoked=state.revoked,
                        custody=state.custody,
                    )
                    for state in states
                ],
            )
            for mailbox, part, states in key_states(user)
        ],
    )


@router.post(
    "/keys/certificate-request",
    response={
        201: CertificateIssuedOut,
        403: ErrorOut,
        404: ErrorOut,
        422: ErrorOut,
        503: ErrorOut,
    },
    summary="Faire certifier une clé créée sur le poste de travail",
)
def request_certificate(
    request: HttpRequest, body: CertificateRequestIn
) -> Status[CertificateIssuedOut] | Status[ErrorOut]:
    if not recently_authenticated(request):
        return _error(
            CustodyError(
                "reauthentication_required",
                _("Reconnectez-vous pour faire certifier une nouvelle clé."),
            )
        )
    try:
        published = do_issue_workstation_certificate(signed_in_user(request), body.csr, request)
        anchor = trust_anchor()
    except CustodyError as failure:
        return _error(failure)
    return Status(
        201,
        CertificateIssuedOut(
            address=published.mailbox.address,
            certificate=published.pem,
            ca_certificate=certificate_pem(anchor).decode("ascii"),
            serial=published.serial,
            fingerprint=published.fingerprint,
            not_before=published.not_before,
            not_after=published.not_after,
        ),
    )


@router.get(
    "/keys/shared",
    response={200: SharedKeysOut, 404: ErrorOut},
    summary="Les clés d'une boîte partagée, chiffrées pour moi",
)
def shared_keys(request: HttpRequest, address: str = "") -> SharedKeysOut | Status[ErrorOut]:
    """A member's wrapped keys of an organisational mailbox, for a workstation client.

    The server cannot open them; the ``pli`` client opens them with the member's
    own key to read the mailbox's mail (REQ-CITY-HOSPITAL). Unknown, not shared
    or not yours: the same 404.
    """
    try:
        held = member_wrapped_keys(signed_in_user(request), address)
    except CustodyError as failure:
        return _error(failure)
    return SharedKeysOut(
        address=address.strip().lower(),
        keys=[
            SharedKeyOut(
                certificate=item.certificate.pem,
                fingerprint=item.certificate.fingerprint,
                current=item.current,
                wrapped_key=base64.b64encode(item.envelope).decode("ascii"),
            )
            for item in held
        ],
    )

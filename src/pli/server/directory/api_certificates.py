"""Certificate discovery: the currently valid certificates of a mailbox (REQ-LPS, REQ-E2E).

``GET /api/directory/certificates?address=`` is what a client (the ``pli`` SDK, a
practice software) calls before sealing a message: it encrypts to every
certificate listed (RFC 8551 §3.3, one RecipientInfo each).

A red-listed mailbox is answered only to an authenticated member, who asks by its
exact address (REQ-DIRECTORY: red-listed mailboxes are resolvable only that way); to
anyone else it does not exist, with the same 404 as an unknown address, so that the
answer does not reveal it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from ninja import Router, Status

from pli.server.directory.actions import BadAddress, normalise_address
from pli.server.directory.models import Mailbox, MailboxCertificate
from pli.server.directory.queries import takes_mail
from pli.server.validation import StrictSchema

router = Router(tags=["directory"])


class _Strict(StrictSchema):
    pass


class MailboxCertificateOut(_Strict):
    pem: str
    #: Hexadecimal, as ``openssl x509 -serial`` prints it (lower case).
    serial: str
    #: SHA-256 of the DER certificate, hexadecimal.
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime


class MailboxCertificatesOut(_Strict):
    address: str
    certificates: list[MailboxCertificateOut]


class ErrorOut(_Strict):
    code: str
    message: str


def _find_mailbox(request: HttpRequest, typed: str, normalised: str) -> Mailbox | None:
    # Through the unique index, as typed and in lower case (how imports store addresses):
    # a case-insensitive scan of every mailbox on each send would cost too much.
    spellings = {typed, normalised}
    found = {m.address: m for m in Mailbox.objects.filter(address__in=spellings)}
    mailbox = found.get(typed) or found.get(normalised)
    if mailbox is None or not takes_mail(mailbox):  # REQ-DIRECTORY: nor its owner's gone
        return None
    if mailbox.red_list and not request.user.is_authenticated:
        return None
    return mailbox


@router.get(
    "/certificates",
    response={200: MailboxCertificatesOut, 404: ErrorOut, 422: ErrorOut},
    summary="Certificats valides d'une boîte aux lettres",
    operation_id="directory_certificates",
)
def mailbox_certificates(
    request: HttpRequest, address: str = ""
) -> Status[MailboxCertificatesOut] | Status[ErrorOut]:
    """The certificates to seal a message for ``address``: not revoked, valid now."""
    try:
        normalised = normalise_address(address)
    except BadAddress as error:
        return Status(422, ErrorOut(code=error.code, message=error.message))
    mailbox = _find_mailbox(request, address.strip(), normalised)
    if mailbox is None:
        return Status(
            404,
            ErrorOut(
                code="mailbox_not_found",
                message=_("Aucune boîte aux lettres de l'annuaire ne correspond à cette adresse."),
            ),
        )
    now = timezone.now()
    certificates = MailboxCertificate.objects.filter(
        mailbox=mailbox, revoked_at__isnull=True, not_before__lte=now, not_after__gte=now
    ).order_by("-not_after", "pk")
    return Status(
        200,
        MailboxCertificatesOut(
            address=mailbox.address,
            certificates=[
                MailboxCertificateOut(
                    pem=c.pem,
                    serial=c.serial,
                    fingerprint=c.fingerprint,
                    not_before=c.not_before,
                    not_after=c.not_after,
                )
                for c in certificates
            ],
        ),
    )


@router.get(
    "/crl",
    response={404: ErrorOut},
    summary="Liste de révocation (CRL) de l'autorité de certification de l'opérateur",
    operation_id="directory_crl",
    openapi_extra={
        "responses": {
            "200": {
                "description": "The operator CA's current CRL, PEM (RFC 5280 §5; RFC 7468)",
                "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
            }
        }
    },
)
def operator_crl(request: HttpRequest) -> HttpResponse | Status[ErrorOut]:
    """The CRL a workstation needs to check revocation without being handed one (``--crl``).

    For members (every endpoint needs a session), though a CRL holds nothing secret.
    It is signed by the operator CA, which the workstation trusts by its own
    configuration, so a client keeps it only if that signature verifies
    (``pli.crypto.TrustStore``): the server cannot forge one. Revoking a
    certificate (a member removed, a key lost) publishes a new one
    (``accounts.operator_ca.publish_crl``), read here from ``PLI_CA_DIR``.
    """
    try:
        pem = (Path(settings.PLI_CA_DIR) / "crl.pem").read_bytes()
    except OSError:
        return Status(
            404,
            ErrorOut(
                code="crl_unavailable",
                message=_("Aucune liste de révocation n'est publiée par cet opérateur."),
            ),
        )
    response = HttpResponse(pem, content_type="application/x-pem-file")
    # A revocation must reach workstations at once: no cache may keep an older list.
    response["Cache-Control"] = "no-cache"
    return response

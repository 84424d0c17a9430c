"""Sealing on the server for the web mail, with the key the vault cookie unlocks.

DESIGN "Key custody" (vault): the web mail produces exactly the envelopes the
workstation client produces. The inner message (real subject, body,
attachments, the patient's identifier: header protection, RFC 8551 §3.1) is
signed with the sender's own personal key (CMS SignedData, SHA-256) and
encrypted (CMS EnvelopedData, AES-256-CBC) to every current certificate of
every recipient mailbox and of the sending mailbox, then handed to
:func:`pli.server.messaging.actions.do_send_message`, which checks it exactly
as an envelope from the API (REQ-E2E). The plaintext lives only in this
request's memory.

Before sealing, the pre-send policy runs here, where the subject is in clear
(the server cannot run it on the API path: the client does): the subject must
not identify the patient (REQ-SUBJECT), recipients are few and in the
directory (REQ-FEW-RECIPIENTS, REQ-DIRECTORY), a recipient never written to
before is confirmed explicitly (REQ-VERIFY-RECIPIENT), a forward needs the
patient's agreement (REQ-AFTER-SEND), and the opposition register is asked
(REQ-OPPOSITION). Every refusal is a
:class:`~pli.server.messaging.access.MessagingError` with a stable code and a
translated message; nothing is stored; refusals of policy are traced in the
audit trail (``messages.sent``, outcome ``failure``, the code only) as the API
traces its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.http import HttpRequest
from django.utils.translation import gettext as _

from pli.crypto import Certificate, CryptoError, SoftwareKey, load_certificate, seal
from pli.mime import Attachment, Draft, ExternalPart, InnerMessage, MimeError, build_inner_message
from pli.mime.types import HEAD_BYTES, AttachmentRefused, attachment_type
from pli.policy import FindingCode, Severity, check_recipients, check_subject, fold_recipients
from pli.server.accounts.custody import personal_mailbox, vault_key_for
from pli.server.accounts.models import User
from pli.server.compliance.findings import finding_message
from pli.server.directory.models import Mailbox
from pli.server.messaging.access import MessagingError, sending_mailbox
from pli.server.messaging.actions import (
    current_certificates,
    do_send_message,
    max_recipients,
    patient_key,
    record_refused_send,
)
from pli.server.messaging.allowance import check_room
from pli.server.messaging.models import Message, MessageCopy
from pli.server.messaging.storage import check_mailbox_room
from pli.server.messaging.uploads import (
    allowed_attachment_types,
    do_copy_message_blob,
    do_discard_uploads,
)
from pli.server.webmail.correspondents import active_mailbox, identity_of, known_correspondents
from pli.server.webmail.uploads import (
    StreamedAttachment,
    inline_limit,
    stream_attachment,
    type_error,
)

#: References kept in a reply's header (RFC 5322 §3.6.4): the thread's root and the last ones.
_MAX_REFERENCES = 20
#: Codes that are a step of the page (the sender answers and sends again), not a refusal.
UI_STEPS = frozenset(
    {"recipient_not_confirmed", "patient_consent_required", "subject_needs_review"}
)


@dataclass(frozen=True)
class Outgoing:
    """What the compose page asks to send."""

    from_address: str
    recipients: Sequence[str]
    subject: str
    body: str
    patient_id: str = ""
    #: The patient's last and first names, only to check the subject (never sent nor stored).
    patient_names: Sequence[str] = ()
    attachments: Sequence[Attachment] = ()
    #: Large attachments encrypted as they arrived (their uploads, their keys).
    streamed: Sequence[StreamedAttachment] = ()
    #: Recipients the sender confirmed as the right ones (REQ-VERIFY-RECIPIENT).
    confirmed: frozenset[str] = frozenset()
    #: The sender looked again at a subject the policy only warned about.
    subject_reviewed: bool = False
    #: The patient agreed to the forward (REQ-AFTER-SEND).
    patient_consent: bool = False


@dataclass(frozen=True)
class Original:
    """The message replied to or forwarded, opened in this request."""

    copy: MessageCopy
    message: InnerMessage
    forward: bool
    #: For a forward: which of its attachments go along (indexes).
    kept_attachments: Sequence[int] = field(default_factory=tuple)
    #: For a forward: which of its large parts go along (indexes among them).
    kept_large: Sequence[int] = field(default_factory=tuple)

    def forwarded_parts(self) -> list[ExternalPart]:
        """The large parts a forward carries: the same ciphertext and key, signed again."""
        if not self.forward:
            return []
        kept = set(self.kept_large)
        return [p for i, p in enumerate(self.message.external_parts) if i in kept]


def _refuse(code: str, message: str, **details: object) -> MessagingError:
    return MessagingError(code, message, details or None)


def _targets(sender: Mailbox, recipients: Sequence[str]) -> list[Mailbox]:
    """The recipient mailboxes, checked as do_send_message checks them, in its order."""
    findings = check_recipients(list(recipients), max_recipients())
    for finding in findings:
        if finding.severity is Severity.REFUSE:
            details: dict[str, object] = {}
            if finding.code is FindingCode.TOO_MANY_RECIPIENTS:
                details["limit"] = max_recipients()
            raise MessagingError(finding.code.value, finding_message(finding), details or None)
    folded = fold_recipients(recipients)
    if sender.address.lower() in folded:
        raise _refuse(
            "recipient_is_sender",
            _("La boîte d'envoi ne peut pas être destinataire : sa copie est dans « Envoyés »."),
        )
    found = [(address, active_mailbox(address)) for address in folded]
    unknown = [address for address, mailbox in found if mailbox is None]
    if unknown:
        raise _refuse(
            "recipient_not_in_directory",
            _("Ces destinataires ne sont pas dans l'annuaire : %(addresses)s.")
            % {"addresses": ", ".join(unknown)},
            addresses=unknown,
        )
    return [mailbox for _address, mailbox in found if mailbox is not None]


def _check_confirmed(
    sender: Mailbox, targets: Sequence[Mailbox], confirmed: frozenset[str]
) -> None:
    """REQ-VERIFY-RECIPIENT: a recipient never written to is confirmed, by address, once."""
    known = known_correspondents(sender, targets)
    agreed = {address.lower() for address in confirmed}
    unconfirmed = [
        t.address for t in targets if t.pk not in known and t.address.lower() not in agreed
    ]
    if unconfirmed:
        raise _refuse(
            "recipient_not_confirmed",
            _(
                "Vous écrivez pour la première fois à ces destinataires : vérifiez leur identité "
                "dans l'annuaire et confirmez-la avant d'envoyer."
            ),
            addresses=unconfirmed,
        )


def _check_subject(outgoing: Outgoing, patient_id: str) -> None:
    """REQ-SUBJECT: no patient identifier nor name in the subject."""
    names = [name for name in outgoing.patient_names if name.strip()]
    findings = check_subject(
        outgoing.subject, patient_names=names, patient_ids=[patient_id] if patient_id else []
    )
    for finding in findings:
        if finding.severity is Severity.REFUSE:
            raise MessagingError(finding.code.value, finding_message(finding))
    warnings = [f for f in findings if f.severity is Severity.WARN]
    if warnings and not outgoing.subject_reviewed:
        raise _refuse(
            "subject_needs_review",
            " ".join(finding_message(f) for f in warnings),
            findings=[f.code.value for f in warnings],
        )


def _display_name(mailbox: Mailbox) -> str:
    found = identity_of(mailbox)
    return found.name if found.name != mailbox.address else ""


def _attachments(
    user: User, outgoing: Outgoing, original: Original | None, made: list[str]
) -> tuple[list[Attachment], list[StreamedAttachment]]:
    """The attachments checked; those the envelope holds, and those it cannot hold.

    What a forward carries and what was attached may together pass what the
    envelope holds (the upload handler only saw the new files): the largest then
    leave it, encrypted as a stream from this request's memory into the blob
    store, as the handler encrypts a large file (their uploads added to ``made``).
    """
    carried: list[Attachment] = []
    if original is not None and original.forward:
        kept = set(original.kept_attachments)
        carried = [a for i, a in enumerate(original.message.attachments) if i in kept]
    everything = [*carried, *outgoing.attachments]
    allowed = allowed_attachment_types()
    for attachment in everything:
        try:
            attachment_type(
                attachment.filename, attachment.content_type, attachment.data[:HEAD_BYTES], allowed
            )
        except AttachmentRefused as refusal:
            raise type_error(refusal) from None
    for part in original.forwarded_parts() if original is not None else []:
        try:
            attachment_type(part.filename, part.content_type, None, allowed)
        except AttachmentRefused as refusal:
            raise type_error(refusal) from None
    inline = list(everything)
    leaving: list[StreamedAttachment] = []
    while inline and sum(len(a.data) for a in inline) > inline_limit():
        largest = max(inline, key=lambda a: len(a.data))
        inline.remove(largest)
        streamed = stream_attachment(user, largest)
        made.append(streamed.upload_id)
        leaving.append(streamed)
    return inline, leaving


def _sealed_for(sender: Mailbox, targets: Sequence[Mailbox]) -> list[Certificate]:
    """Every current certificate of every recipient mailbox and of the sending mailbox.

    What ``do_send_message`` requires (``not_encrypted_to_recipient``): whichever
    key each mailbox's holders use opens the message, and the Sent copy stays
    readable; :func:`pli.crypto.seal` adds the signer's own certificate.
    """
    everyone = [sender, *targets]
    certificates = current_certificates(everyone)
    without = [m.address for m in everyone if not certificates[m.pk]]
    if without:
        raise _refuse(
            "recipient_without_certificate",
            _(
                "Ces boîtes n'ont pas de certificat valide, le message ne peut pas leur être "
                "chiffré : %(addresses)s."
            )
            % {"addresses": ", ".join(without)},
            addresses=without,
        )
    return [
        load_certificate(row.pem.encode())
        for mailbox in everyone
        for row in certificates[mailbox.pk]
    ]


def _draft(
    user: User,
    sender: Mailbox,
    *,
    targets: Sequence[Mailbox],
    outgoing: Outgoing,
    patient_id: str,
    original: Original | None,
    attachments: list[Attachment],
    streamed: list[StreamedAttachment],
) -> Draft:
    reply = original is not None and not original.forward
    in_reply_to = original.message.message_id if reply and original is not None else None
    references: list[str] = []
    if reply and original is not None:
        chain = [*original.message.references, original.message.message_id]
        references = chain if len(chain) <= _MAX_REFERENCES else [chain[0], *chain[-19:]]
    own = personal_mailbox(user)
    return Draft(
        from_address=sender.address,
        from_name=_display_name(sender),
        # REQ-FEW-RECIPIENTS: in a group send, recipients do not see each other; the
        # signed headers then name only the sending mailbox (blind copy).
        to=[targets[0].address] if len(targets) == 1 else [sender.address],
        sender=own.address if own is not None and own.pk != sender.pk else None,
        subject=outgoing.subject,
        body_text=outgoing.body,
        patient_id=patient_id or None,
        in_reply_to=in_reply_to,
        references=references,
        attachments=attachments,
        external_parts=[
            *(original.forwarded_parts() if original is not None else []),
            *(part.part for part in streamed),
        ],
    )


def send_from_web(
    request: HttpRequest,
    user: User,
    outgoing: Outgoing,
    *,
    original: Original | None = None,
) -> Message:
    """Check, seal with the vault-unlocked key and send; a refusal stores nothing.

    Raises :class:`~pli.server.accounts.custody.CustodyError` (``vault_locked``…)
    when the session cannot sign, :class:`MessagingError` for every refusal.
    """
    own = personal_mailbox(user)
    if own is None:
        raise _refuse(
            "not_allowed_sender", _("Vous ne pouvez pas envoyer de message depuis cette adresse.")
        )
    signer = vault_key_for(request, own)
    # The uploads this function makes (attachments leaving the envelope, copies of a
    # forward's large parts): gone again unless the send takes them.
    made: list[str] = []
    try:
        return _seal_and_send(request, user, signer, outgoing, original=original, made=made)
    except BaseException:
        do_discard_uploads(user, made)
        raise


def _seal_and_send(
    request: HttpRequest,
    user: User,
    signer: SoftwareKey,
    outgoing: Outgoing,
    *,
    original: Original | None,
    made: list[str],
) -> Message:
    try:
        sender, targets, envelope, patient_id, streamed = _seal(
            user, signer, outgoing, original, made
        )
    except MessagingError as error:
        if error.code not in UI_STEPS:
            record_refused_send(user, request, error.code)
        raise
    # A forward's large parts: the new message needs blobs of its own (copies).
    forwarded = original.forwarded_parts() if original is not None else []
    if forwarded:
        # Copying gigabytes that the send would refuse is not done at all: the sender's
        # daily limits, and the room left in the recipients' mailboxes.
        size = (
            len(envelope)
            + sum(part.size for part in forwarded)
            + sum(attachment.part.size for attachment in streamed)
        )
        try:
            check_room(user, size)
            check_mailbox_room(targets, size)
        except MessagingError as error:
            record_refused_send(user, request, error.code)
            raise
    copies: list[str] = []
    for part in forwarded:
        assert original is not None  # noqa: S101 - forwarded_parts is empty otherwise
        copies.append(do_copy_message_blob(user, original.copy, part.blob_id, request).public_id)
        made.append(copies[-1])
    # The authoritative checks, in one transaction (refusals traced there).
    reply = original is not None and not original.forward
    return do_send_message(
        user,
        sender.address,
        [target.address for target in targets],
        envelope,
        patient_id=patient_id or None,
        in_reply_to=(original.copy.message.public_id if reply and original is not None else None),
        request=request,
        blobs=[*copies, *(part.upload_id for part in streamed)],
    )


def _seal(
    user: User, signer: SoftwareKey, outgoing: Outgoing, original: Original | None, made: list[str]
) -> tuple[Mailbox, list[Mailbox], bytes, str, list[StreamedAttachment]]:
    """The pre-send checks, then the envelope: (sending mailbox, recipients, envelope,
    patient, the new attachments that travel beside it)."""
    sender = sending_mailbox(user, outgoing.from_address)
    targets = _targets(sender, outgoing.recipients)
    _check_confirmed(sender, targets, outgoing.confirmed)
    forward = original is not None and original.forward
    # A forward keeps the patient of what it forwards: the opposition check follows it.
    patient_id = (
        (original.message.patient_id or "").partition(":")[2] or outgoing.patient_id
        if forward and original is not None
        else outgoing.patient_id
    ).strip()
    if forward and not outgoing.patient_consent:
        raise _refuse(
            "patient_consent_required",
            _(
                "Un message ne se transfère qu'avec l'accord du patient : "
                "confirmez que le patient a donné son accord."
            ),
        )
    _check_subject(outgoing, patient_id)
    patient_key(patient_id or None)  # bad_patient_id, patient_opposed (REQ-OPPOSITION)
    attachments, leaving = _attachments(user, outgoing, original, made)
    streamed = [*outgoing.streamed, *leaving]
    certificates = _sealed_for(sender, targets)
    try:
        inner = build_inner_message(
            _draft(
                user,
                sender,
                targets=targets,
                outgoing=outgoing,
                patient_id=patient_id,
                original=original,
                attachments=attachments,
                streamed=streamed,
            )
        )
    except MimeError as error:
        raise _refuse(
            "message_not_built",
            _("Le message ne peut pas être construit : vérifiez l'objet et les pièces jointes."),
            reason=error.code,
        ) from None
    try:
        envelope = seal(inner, signer, certificates)
    except CryptoError as error:
        raise _refuse(
            "message_not_sealed",
            _("Le message n'a pas pu être chiffré pour ses destinataires."),
            reason=error.code,
        ) from None
    return sender, targets, envelope, patient_id, streamed

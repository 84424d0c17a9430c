"""Pages of the web mail: folders, reading, compose / reply / forward, attachments.

Thin: who may see what is :mod:`pli.server.messaging.access`, every state
change a ``do_…`` action of :mod:`pli.server.messaging.actions`, opening
envelopes :mod:`pli.server.webmail.opening`, sealing
:mod:`pli.server.webmail.sending`. Server-rendered, usable without script
(``static/pli/webmail.js`` only adds the directory suggestions and the
recipient check as the sender types); no inline script or style (CSP).

Pages that show a message's content are ``no-store``; a message or mailbox
that is not the caller's answers 404 exactly like one that does not exist.
When the session's vault is locked, the reading and compose pages send to the
unlock page, which sends back.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Prefetch
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pli.crypto import SoftwareKey
from pli.identifiers import IdentifierError, format_identifier, parse_identifier
from pli.mime import Attachment, InnerMessage
from pli.mime.types import HEAD_BYTES
from pli.server.accounts.custody import CustodyError, personal_mailbox, vault_keys_for
from pli.server.accounts.models import Custody, User
from pli.server.accounts.session_auth import signed_in_user
from pli.server.config import positive_setting
from pli.server.directory.models import Mailbox
from pli.server.messaging.access import (
    MessagingError,
    access_copy_by_message_id,
    access_mailbox_by_address,
    reachable_mailboxes,
    sending_mailbox,
)
from pli.server.messaging.actions import (
    do_delete_message,
    do_move_message,
    do_open_envelope,
    do_record_opened,
    envelopes_in_database,
    home_folder,
    max_recipients,
    read_envelope,
)
from pli.server.messaging.models import (
    Delivery,
    DeliveryState,
    Folder,
    Message,
    MessageCopy,
)
from pli.server.messaging.storage import Storage, storage_of
from pli.server.messaging.uploads import max_attachment_bytes, open_message_blob
from pli.server.validation import whole_number
from pli.server.webmail.correspondents import (
    check_recipients,
    identities,
    split_addresses,
    suggestions,
)
from pli.server.webmail.forms import ComposeForm
from pli.server.webmail.opening import (
    DecryptedDownload,
    OpenedCopy,
    Signature,
    TrustUnavailable,
    open_copy,
    trust_store,
)
from pli.server.webmail.receipts import mark_read_with_receipt
from pli.server.webmail.sending import Original, Outgoing, send_from_web
from pli.server.webmail.uploads import (
    END_FIELD,
    SealingUploadHandler,
    StreamedAttachment,
    StreamedFile,
    declared_type,
    inline_limit,
    received_refusal,
    request_limit,
    seal_uploads_as_they_come,
)

PAGE_SIZE = 25
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
#: Types a downloaded attachment keeps; anything else is application/octet-stream.
_DOWNLOAD_TYPES = frozenset(
    {
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/gif",
        "text/plain",
        "text/csv",
        "application/zip",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.oasis.opendocument.text",
        "application/dicom",
    }
)
#: A downloaded attachment is never run as a page of this site.
_DOWNLOAD_CSP = "default-src 'none'; sandbox"
FOLDER_ORDER = (Folder.INBOX, Folder.SENT, Folder.ARCHIVE, Folder.TRASH)


# --------------------------------------------------------------------------- helpers


def _not_found(request: HttpRequest) -> HttpResponse:
    return render(request, "webmail/not_found.html", status=404)


def _folder_url(address: str, folder: str = Folder.INBOX, page: int = 1) -> str:
    query = {"boite": address, "dossier": folder}
    if page > 1:
        query["page"] = str(page)
    return reverse("webmail:folder") + "?" + urlencode(query)


def _message_url(public_id: str, address: str) -> str:
    return reverse("webmail:message", args=[public_id]) + "?" + urlencode({"boite": address})


def _unlock_url(request: HttpRequest) -> str:
    return reverse("accounts:vault-unlock") + "?" + urlencode({"next": request.get_full_path()})


def _keys(request: HttpRequest, mailbox: Mailbox) -> tuple[list[SoftwareKey], str]:
    """The keys of ``mailbox`` this session opens, or why none (a stable code)."""
    try:
        return vault_keys_for(request, mailbox), ""
    except CustodyError as error:
        return [], error.code


def _copy(request: HttpRequest, message_id: str) -> MessageCopy | HttpResponse:
    """The caller's copy, or the 404 page (missing and not yours answer alike; an id of
    another shape too, refused by the access helper before any query)."""
    address = request.GET.get("boite", "")[:254] or None
    try:
        return access_copy_by_message_id(signed_in_user(request), message_id, address)
    except MessagingError as error:
        if error.code == "mailbox_ambiguous" and request.method == "GET":
            mailboxes = error.details.get("mailboxes")
            if isinstance(mailboxes, list) and mailboxes:
                return HttpResponseRedirect(
                    request.path + "?" + urlencode({"boite": str(mailboxes[0])})
                )
        return _not_found(request)


def _open(request: HttpRequest, copy: MessageCopy, keys: Sequence[SoftwareKey]) -> OpenedCopy:
    """Fetch (traced: ``messages.opened``), decrypt and verify, in memory."""
    try:
        trust = trust_store()
    except TrustUnavailable:
        return OpenedCopy(copy, Signature("trust_unavailable"))
    try:
        envelope = do_open_envelope(signed_in_user(request), copy, request)
    except MessagingError as error:
        return OpenedCopy(copy, Signature(error.code))
    return open_copy(copy, envelope, keys, trust=trust)


@dataclass(frozen=True)
class FolderLink:
    label: str
    url: str
    current: bool
    unread: int = 0


@dataclass(frozen=True)
class MailboxEntry:
    address: str
    part: str
    folders: list[FolderLink]
    #: What it holds and its quota (pli.server.messaging.storage).
    storage: Storage


def _sidebar(user: User, current: Mailbox | None, folder: str) -> list[MailboxEntry]:
    reachable = reachable_mailboxes(user)
    unread = dict(
        MessageCopy.objects.filter(
            mailbox_id__in=[r.mailbox.pk for r in reachable], folder=Folder.INBOX, read=False
        )
        .values("mailbox_id")
        .annotate(count=Count("pk"))
        .values_list("mailbox_id", "count")
    )
    storage = storage_of(r.mailbox.pk for r in reachable)
    entries = []
    for r in reachable:
        here = current is not None and current.pk == r.mailbox.pk
        entries.append(
            MailboxEntry(
                address=r.mailbox.address,
                part=r.part,
                folders=[
                    FolderLink(
                        label=str(Folder(f).label),
                        url=_folder_url(r.mailbox.address, f),
                        current=here and folder == f,
                        unread=unread.get(r.mailbox.pk, 0) if f == Folder.INBOX else 0,
                    )
                    for f in FOLDER_ORDER
                ],
                storage=storage[r.mailbox.pk],
            )
        )
    return entries


def _state_label(state: str) -> str:
    return str(DeliveryState(state).label) if state in DeliveryState.values else state


# --------------------------------------------------------------------------- folders


@dataclass
class Row:
    url: str
    read: bool
    correspondent: str
    date: Any
    size: int
    subject: str | None = None
    status: str = ""
    status_text: str = ""
    attachments: int = 0
    states: list[str] = field(default_factory=list)
    #: A read receipt, labelled so (opening.OpenedCopy.receipt).
    receipt: bool = False
    #: Too large to open for a listing: its subject shows when it is opened.
    deferred: bool = False


#: ``PLI_WEBMAIL_LIST_OPEN_BYTES``: envelopes up to this size are opened to list their subject.
LIST_OPEN_BYTES_DEFAULT = 512 * 1024


def list_open_bytes() -> int:
    """The largest envelope a folder page decrypts to show its subject and signature.

    A listing opens each envelope of its page (25): a letter of some tens of KB
    costs a few milliseconds, but anyone in the directory can send ten-MB
    envelopes (the inline limit), which cost about a second each; a page of them
    would hold a worker for half a minute at every load of a mailbox that is
    every member's landing page. Above this size a row shows its subject on
    opening.
    """
    return positive_setting("WEBMAIL_LIST_OPEN_BYTES", LIST_OPEN_BYTES_DEFAULT)


def _delivery_summary(deliveries: Sequence[Delivery]) -> list[str]:
    read = sum(1 for d in deliveries if d.state == DeliveryState.READ)
    failed = sum(1 for d in deliveries if d.state == DeliveryState.FAILED)
    waiting = sum(1 for d in deliveries if d.state == DeliveryState.QUEUED)
    total = len(deliveries)
    summary = [_("Lu par %(read)s sur %(total)s") % {"read": read, "total": total}]
    if waiting:
        summary.append(_("%(count)s en attente") % {"count": waiting})
    if failed:
        summary.append(_("%(count)s en échec") % {"count": failed})
    return summary


@require_GET
@login_required
@never_cache
def folder_view(request: HttpRequest) -> HttpResponse:
    """A folder of one mailbox, newest first, with the subjects opened in memory."""
    user = signed_in_user(request)
    reachable = reachable_mailboxes(user)
    if not reachable:
        return render(request, "webmail/no_mailbox.html")
    address = request.GET.get("boite", "")[:254]
    try:
        mailbox = access_mailbox_by_address(user, address) if address else reachable[0].mailbox
    except MessagingError:
        return _not_found(request)
    folder = request.GET.get("dossier", Folder.INBOX)
    page_text = request.GET.get("page", "1")
    page = whole_number(page_text, digits=7) or 0
    if folder not in Folder.values or not 1 <= page <= 10**6:
        return _not_found(request)
    start = (page - 1) * PAGE_SIZE
    copies = list(
        MessageCopy.objects.filter(mailbox=mailbox, folder=folder)
        .select_related("message", "mailbox", "delivery")
        .prefetch_related(Prefetch("message__deliveries", queryset=Delivery.objects.order_by("pk")))
        .order_by("-created_at", "-pk")[start : start + PAGE_SIZE + 1]
    )
    shown = copies[:PAGE_SIZE]
    keys, failure = _keys(request, mailbox)
    rows = _rows(request, user, shown, keys, failure)
    return render(
        request,
        "webmail/folder.html",
        {
            "sidebar": _sidebar(user, mailbox, folder),
            "mailbox": mailbox,
            "folder": folder,
            "folder_label": Folder(folder).label,
            "sent_view": folder == Folder.SENT,
            "rows": rows,
            "locked": failure == "vault_locked",
            "key_failure": failure,
            "unlock_url": _unlock_url(request),
            "page": page,
            "previous_url": _folder_url(mailbox.address, folder, page - 1) if page > 1 else "",
            "next_url": (
                _folder_url(mailbox.address, folder, page + 1) if len(copies) > PAGE_SIZE else ""
            ),
        },
    )


def _rows(
    request: HttpRequest,
    user: User,
    copies: Sequence[MessageCopy],
    keys: Sequence[SoftwareKey],
    failure: str,
) -> list[Row]:
    addresses: set[str] = set()
    for copy in copies:
        addresses.add(copy.message.sender_address)
        if copy.is_sender_copy:
            addresses.update(d.recipient_address for d in copy.message.deliveries.all())
    names = identities(addresses)

    def name(address: str) -> str:
        found = names.get(address.lower())
        return found.name if found else address

    trust = None
    if keys:
        try:
            trust = trust_store()
        except TrustUnavailable:
            failure = "trust_unavailable"
    rows: list[Row] = []
    opened: list[MessageCopy] = []
    # The page's envelopes kept in the database: one query, not one a row.
    loaded = envelopes_in_database(c.message for c in copies) if trust is not None else {}
    for copy in copies:
        message = copy.message
        deliveries = list(message.deliveries.all()) if copy.is_sender_copy else []
        row = Row(
            url=_message_url(message.public_id, copy.mailbox.address),
            read=copy.read,
            correspondent=(
                ", ".join(name(d.recipient_address) for d in deliveries)
                if copy.is_sender_copy
                else name(message.sender_address)
            ),
            date=copy.created_at,
            size=message.size,
            states=_delivery_summary(deliveries) if deliveries else [],
            status=failure,
        )
        if trust is not None and message.size > list_open_bytes():
            row.deferred = True
        elif trust is not None:
            try:
                envelope = read_envelope(copy, loaded=loaded)
            except MessagingError as error:
                row.status = error.code
            else:
                result = open_copy(copy, envelope, keys, trust=trust)
                opened.append(copy)
                row.status = result.signature.code
                if result.message is not None:
                    row.subject = result.message.subject
                    row.receipt = result.receipt
                    row.attachments = len(result.message.attachments)
        if row.status and row.status != "valid":
            row.status_text = Signature(row.status).reason
        rows.append(row)
    do_record_opened(user, opened, request)
    return rows


# --------------------------------------------------------------------------- one message


def patient_text(tagged: str | None) -> str:
    """A message's patient (``nir:…``, ``niss:…``) as people read it: ``NIR 1 85 05 78 006 084 91``.

    As signed, should it not parse (an older or foreign client's form): what it is
    is shown rather than hidden.
    """
    if not tagged:
        return ""
    kind, _separator, value = tagged.partition(":")
    try:
        return format_identifier(parse_identifier(value, kind))
    except IdentifierError:
        return tagged


@dataclass(frozen=True)
class DeliveryRow:
    address: str
    name: str
    state: str
    state_label: str
    delivered_at: Any
    read_at: Any


@require_GET
@login_required
@never_cache
def message_view(request: HttpRequest, message_id: str) -> HttpResponse:
    """One message: signature status and signer, content, attachments, delivery states."""
    found = _copy(request, message_id)
    if isinstance(found, HttpResponse):
        return found
    copy = found
    user = signed_in_user(request)
    keys, failure = _keys(request, copy.mailbox)
    if failure == "vault_locked":
        return HttpResponseRedirect(_unlock_url(request))
    opened = _open(request, copy, keys) if keys else OpenedCopy(copy, Signature(failure))
    if opened.readable and not copy.read:
        # The recipient's delivery becomes "read" for the sender (docs/api/messaging.md),
        # with a signed read receipt (RFC 8098 MDN) to the sending mailbox (receipts.py).
        mark_read_with_receipt(request, user, opened, keys)
        copy.read = True
    message = copy.message
    names = identities(
        [message.sender_address, *(d.recipient_address for d in message.deliveries.all())]
    )
    deliveries = []
    if copy.is_sender_copy:
        for d in message.deliveries.order_by("pk"):
            known = names.get(d.recipient_address.lower())
            deliveries.append(
                DeliveryRow(
                    address=d.recipient_address,
                    name=known.name if known else d.recipient_address,
                    state=d.state,
                    state_label=_state_label(d.state),
                    delivered_at=d.delivered_at,
                    read_at=d.read_at,
                )
            )
    in_thread = MessageCopy.objects.filter(
        mailbox=copy.mailbox, message__thread_id=message.thread_id
    ).exclude(pk=copy.pk)
    # The most recent entries only: anyone in the directory can answer in a thread as
    # often as the daily limits let them, and this page is read by every member.
    thread = list(
        in_thread.select_related("message", "mailbox").order_by("-created_at", "-pk")[
            :THREAD_LISTED
        ]
    )[::-1]
    thread_older = in_thread.count() - len(thread) if len(thread) == THREAD_LISTED else 0
    inner = opened.message
    return render(
        request,
        "webmail/message.html",
        {
            "sidebar": _sidebar(user, copy.mailbox, copy.folder),
            "copy": copy,
            "message": message,
            "inner": inner,
            "patient": patient_text(inner.patient_id if inner else None),
            "signature": opened.signature,
            "sender": names.get(message.sender_address.lower()),
            "deliveries": deliveries,
            "attachments": [
                {
                    "index": index,
                    "name": safe_filename(a.filename),
                    "size": len(a.data),
                    "refused": received_refusal(a.filename, a.content_type, a.data[:HEAD_BYTES]),
                    "url": reverse("webmail:attachment", args=[message.public_id, index])
                    + "?"
                    + urlencode({"boite": copy.mailbox.address}),
                }
                for index, a in enumerate(inner.attachments if inner else [])
            ]
            + [
                {
                    "index": index,
                    "name": safe_filename(part.filename),
                    "size": part.plaintext_size,
                    "large": True,
                    "refused": received_refusal(part.filename, part.content_type, None),
                    "url": reverse("webmail:large_attachment", args=[message.public_id, index])
                    + "?"
                    + urlencode({"boite": copy.mailbox.address}),
                }
                for index, part in enumerate(inner.external_parts if inner else [])
            ],
            "thread": _thread(request, user, message, thread, keys),
            "thread_older": thread_older,
            "folder_label": Folder(copy.folder).label,
            "folder_url": _folder_url(copy.mailbox.address, copy.folder),
            "home_folder": home_folder(copy),
            "boite": copy.mailbox.address,
            "unlock_url": _unlock_url(request),
            "reply_url": reverse("webmail:reply", args=[message.public_id])
            + "?"
            + urlencode({"boite": copy.mailbox.address}),
            "forward_url": reverse("webmail:forward", args=[message.public_id])
            + "?"
            + urlencode({"boite": copy.mailbox.address}),
            "html_only": inner is not None and not inner.body_text and inner.body_html,
        },
    )


#: The most recent thread entries, opened for their kind (read receipt or message) and
#: subject; the older ones, in a longer thread, are listed by sender and date only. Fewer
#: than a folder page (each opening costs milliseconds and is traced), and only envelopes a
#: listing would open (list_open_bytes): a thread of ten-MB messages costs no more to show.
THREAD_OPENED = 20
#: The most recent thread entries listed on a message's page; the older ones are counted.
THREAD_LISTED = 100


@dataclass(frozen=True)
class ThreadEntry:
    url: str
    date: Any
    #: The sending mailbox's name in the directory, or its address.
    sender: str
    #: The message this one answers.
    parent: bool
    #: A read receipt (None: not opened, its kind unknown).
    receipt: bool | None = None
    subject: str | None = None


def _thread(
    request: HttpRequest,
    user: User,
    message: Message,
    copies: Sequence[MessageCopy],
    keys: Sequence[SoftwareKey],
) -> list[ThreadEntry]:
    """The other messages of the thread in this mailbox, each said for what it is.

    A read receipt joins the thread of the message read (RFC 8098, In-Reply-To),
    from the reader's mailbox: only its signed content tells it from a reply, so
    the nearest entries are opened in memory, as a folder page opens its rows,
    and traced alike (REQ-TRACE).
    """
    names = identities(c.message.sender_address for c in copies)
    opened_kinds: dict[int, OpenedCopy] = {}
    largest = list_open_bytes()
    nearest = [c for c in copies[-THREAD_OPENED:] if c.message.size <= largest]
    if keys and nearest:
        try:
            trust = trust_store()
        except TrustUnavailable:
            nearest = []
        loaded = envelopes_in_database(c.message for c in nearest) if nearest else {}
        for c in nearest:
            try:
                envelope = read_envelope(c, loaded=loaded)
            except MessagingError:
                continue
            opened_kinds[c.pk] = open_copy(c, envelope, keys, trust=trust)
        do_record_opened(user, [c for c in nearest if c.pk in opened_kinds], request)
    entries = []
    for c in copies:
        known = names.get(c.message.sender_address.lower())
        result = opened_kinds.get(c.pk)
        inner = result.message if result is not None else None
        entries.append(
            ThreadEntry(
                url=_message_url(c.message.public_id, c.mailbox.address),
                date=c.created_at,
                sender=known.name if known else c.message.sender_address,
                parent=c.message_id == message.in_reply_to_id,
                receipt=result.receipt if result is not None and inner is not None else None,
                subject=inner.subject if inner is not None else None,
            )
        )
    return entries


def safe_filename(name: str) -> str:
    """A plain file name: no directory, no hidden file, no control or bidi character."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    cleaned = cleaned.strip().lstrip(".").strip()
    return cleaned[:200] or "piece-jointe"


def content_disposition(name: str) -> str:
    """RFC 6266 §4.3: an ASCII fallback and the exact UTF-8 name (RFC 8187)."""
    safe = safe_filename(name)
    fallback = "".join(
        c if c.isascii() and (c.isalnum() or c in " ._-()") else "_" for c in safe
    ).strip()
    return (
        f'attachment; filename="{fallback or "piece-jointe"}"; '
        f"filename*=UTF-8''{quote(safe, safe='')}"
    )


def _opened_for_download(
    request: HttpRequest, message_id: str
) -> tuple[MessageCopy, InnerMessage] | HttpResponse:
    """The caller's copy and its genuine inner message, or the answer to give instead
    (the same 404 for "missing" and "not yours"; the unlock page for a locked vault)."""
    found = _copy(request, message_id)
    if isinstance(found, HttpResponse):
        return found
    keys, failure = _keys(request, found.mailbox)
    if failure == "vault_locked":
        return HttpResponseRedirect(_unlock_url(request))
    if not keys:
        return _not_found(request)
    opened = _open(request, found, keys)
    if opened.message is None:
        return _not_found(request)
    return found, opened.message


def _as_download(response: HttpResponseBase, filename: str, content_type: str) -> None:
    """Headers that make an attachment a download, never a page of Pli."""
    kind = content_type.lower()
    response["Content-Type"] = kind if kind in _DOWNLOAD_TYPES else "application/octet-stream"
    response["Content-Disposition"] = content_disposition(filename)
    response["Content-Security-Policy"] = _DOWNLOAD_CSP
    response["Cache-Control"] = "no-store"


def _refused_download(request: HttpRequest, copy: MessageCopy) -> HttpResponse:
    """Back to the message, which says why beside the attachment.

    The note carried to the next page is a fixed text: it goes through the
    messages framework (a cookie, or the session in the database), where a
    decrypted file name has no place.
    """
    messages.error(
        request,
        _("Cette pièce jointe n'est pas téléchargeable : la raison est indiquée à côté d'elle."),
    )
    return HttpResponseRedirect(_message_url(copy.message.public_id, copy.mailbox.address))


@require_GET
@login_required
@never_cache
def attachment_view(request: HttpRequest, message_id: str, index: int) -> HttpResponse:
    """An attachment of a genuine message, as a download (never shown as a page of Pli)."""
    found = _opened_for_download(request, message_id)
    if isinstance(found, HttpResponse):
        return found
    inner = found[1]
    if not 0 <= index < len(inner.attachments):
        return _not_found(request)
    attachment = inner.attachments[index]
    refusal = received_refusal(
        attachment.filename, attachment.content_type, attachment.data[:HEAD_BYTES]
    )
    if refusal is not None:
        return _refused_download(request, found[0])
    response = HttpResponse(attachment.data)
    _as_download(response, attachment.filename, attachment.content_type)
    return response


@require_GET
@login_required
@never_cache
def large_attachment_view(request: HttpRequest, message_id: str, index: int) -> HttpResponseBase:
    """A large attachment (streamed encryption, decision 0003), decrypted as it downloads.

    The same checks as :func:`attachment_view`; the ciphertext is the blob the
    API serves (``open_message_blob``: only through a copy of the message, traced
    as ``messages.opened`` with the blob), and the key is in the signed message
    that the vault opens. Only a genuine message's parts are served.
    """
    found = _opened_for_download(request, message_id)
    if isinstance(found, HttpResponse):
        return found
    copy, inner = found
    if not 0 <= index < len(inner.external_parts):
        return _not_found(request)
    part = inner.external_parts[index]
    refusal = received_refusal(part.filename, part.content_type, None)
    if refusal is not None:
        return _refused_download(request, copy)
    try:
        blob = open_message_blob(signed_in_user(request), copy, part.blob_id, None, request)
    except MessagingError as error:
        if error.code == "not_found":
            return _not_found(request)
        # blob_unavailable: the store lacks it or holds another size (logged there).
        messages.error(request, error.message)
        return HttpResponseRedirect(_message_url(copy.message.public_id, copy.mailbox.address))
    response = StreamingHttpResponse(DecryptedDownload(blob.handle, part, message_id))
    _as_download(response, part.filename, part.content_type)
    # Promised in full: a stream cut short by a failed check is a failed download.
    response["Content-Length"] = str(part.plaintext_size)
    return response


@require_POST
@login_required
def move_view(request: HttpRequest, message_id: str) -> HttpResponse:
    found = _copy(request, message_id)
    if isinstance(found, HttpResponse):
        return found
    copy, before = found, found.folder
    folder = request.POST.get("folder", "")[:16]
    try:
        do_move_message(signed_in_user(request), copy, folder, request)
    except MessagingError as error:
        messages.error(request, error.message)
        return HttpResponseRedirect(_message_url(copy.message.public_id, copy.mailbox.address))
    messages.success(
        request, _("Message déplacé vers « %(folder)s ».") % {"folder": Folder(folder).label}
    )
    return HttpResponseRedirect(_folder_url(copy.mailbox.address, before))


@require_http_methods(["GET", "POST"])
@login_required
@never_cache
def delete_view(request: HttpRequest, message_id: str) -> HttpResponse:
    """To the trash at once (it can come back); from the trash, only once confirmed.

    Deleting from the trash cannot be undone: the button leads to a page that asks
    (GET), and only its explicit confirmation (``confirm=1``) deletes. A POST
    without it, from an old page or a second click, gets the same question.
    Without script (CSP): a page of its own, usable by keyboard and screen reader.
    """
    found = _copy(request, message_id)
    if isinstance(found, HttpResponse):
        return found
    copy, before = found, found.folder
    confirmed = request.method == "POST" and request.POST.get("confirm") == "1"
    if copy.folder == Folder.TRASH and not confirmed:
        return _confirm_delete(request, copy)
    if request.method != "POST":
        return HttpResponseRedirect(_message_url(copy.message.public_id, copy.mailbox.address))
    # For good only what was confirmed in the trash: a second click that finds the copy
    # moved meanwhile by the first does not delete it (do_delete_message decides under lock).
    result = do_delete_message(
        signed_in_user(request), copy, request, for_good=copy.folder == Folder.TRASH and confirmed
    )
    messages.success(
        request,
        _("Message supprimé définitivement.")
        if result.permanent
        else _("Message mis à la corbeille."),
    )
    return HttpResponseRedirect(_folder_url(copy.mailbox.address, before))


def _confirm_delete(request: HttpRequest, copy: MessageCopy) -> HttpResponse:
    """The question before deleting for good: which message (routing metadata only), and
    an explicit confirmation or a way back."""
    message = copy.message
    known = identities([message.sender_address]).get(message.sender_address.lower())
    return render(
        request,
        "webmail/delete_confirm.html",
        {
            "sidebar": _sidebar(signed_in_user(request), copy.mailbox, copy.folder),
            "copy": copy,
            "message": message,
            "sender": known,
            "action_url": reverse("webmail:delete", args=[message.public_id])
            + "?"
            + urlencode({"boite": copy.mailbox.address}),
            "cancel_url": _message_url(message.public_id, copy.mailbox.address),
        },
    )


# --------------------------------------------------------------------------- directory helpers


@require_GET
@login_required
@never_cache
def directory_view(request: HttpRequest) -> HttpResponse:
    """Directory suggestions for the compose page (a fragment: name, profession, place).

    ``liste=1`` (the page's script): the options of an ARIA listbox; otherwise
    buttons that post the form back, as the page itself shows them without script.
    """
    query = request.GET.get("q", "")[:100]
    return render(
        request,
        "webmail/_suggestions.html",
        {
            "suggestions": suggestions(query),
            "q": query,
            "searched": len(query.strip()) >= 2,
            "listbox": request.GET.get("liste") == "1",
        },
    )


@require_GET
@login_required
@never_cache
def recipients_view(request: HttpRequest) -> HttpResponse:
    """Who each typed address is, and which need a first-time confirmation (a fragment)."""
    user = signed_in_user(request)
    try:
        sender: Mailbox | None = sending_mailbox(user, request.GET.get("de", "")[:254])
    except MessagingError:
        sender = None
    addresses = _split(request.GET.get("a", ""))
    return render(
        request,
        "webmail/_recipient_check.html",
        {"checks": check_recipients(sender, addresses, request.GET.getlist("ok"))},
    )


def _split(text: str) -> list[str]:
    return split_addresses(text[:4000])[: max_recipients() + 5]


# --------------------------------------------------------------------------- compose


def _prefixed(prefix: str, subject: str) -> str:
    """``RE : subject`` once, however many times it was answered."""
    if subject.lower().replace(" ", "").startswith(prefix.lower().replace(" ", "")):
        return subject
    return f"{prefix}{subject}"[:200]


def _quote(copy: MessageCopy, inner: InnerMessage, author: str) -> str:
    when = formats.date_format(timezone.localtime(copy.message.created_at), "DATETIME_FORMAT")
    lines = "\n".join(f"> {line}" if line else ">" for line in inner.body_text.splitlines())
    heading = _("Le %(date)s, %(author)s a écrit :") % {"date": when, "author": author}
    return f"\n\n{heading}\n{lines}\n"


def _forwarded(copy: MessageCopy, inner: InnerMessage, author: str) -> str:
    when = formats.date_format(timezone.localtime(copy.message.created_at), "DATETIME_FORMAT")
    return "\n".join(
        [
            "",
            "",
            _("---------- Message transféré ----------"),
            _("De : %(author)s <%(address)s>") % {"author": author, "address": inner.from_address},
            _("Date : %(date)s") % {"date": when},
            _("Objet : %(subject)s") % {"subject": inner.subject},
            "",
            inner.body_text,
        ]
    )


def _uploads(request: HttpRequest) -> tuple[list[Attachment], list[StreamedAttachment]]:
    """The attachments of the compose form: those in memory, and those encrypted as they came."""
    inline: list[Attachment] = []
    streamed: list[StreamedAttachment] = []
    for upload in request.FILES.getlist("attachments"):
        if isinstance(upload, StreamedFile):
            part = upload.streamed.part
            streamed.append(
                replace(upload.streamed, part=replace(part, filename=safe_filename(part.filename)))
            )
            continue
        kind = declared_type(upload.content_type)
        if not _MIME_TYPE.fullmatch(kind):
            kind = "application/octet-stream"
        inline.append(Attachment(safe_filename(upload.name or ""), kind, upload.read()))
    return inline, streamed


@dataclass
class ComposeState:
    mode: str
    senders: list[str]
    original: Original | None = None
    original_copy: MessageCopy | None = None
    original_author: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    suggestions: list[Any] = field(default_factory=list)
    query: str = ""
    searched: bool = False
    files_dropped: bool = False
    review: bool = False


def _kept(request: HttpRequest, name: str = "keep") -> list[int]:
    """The forwarded attachments to keep (their positions); anything else is ignored.

    ``keep``: those inside the envelope; ``keep_large``: the large parts.
    """
    found = (whole_number(k, digits=3) for k in request.POST.getlist(name)[:100])
    return [number for number in found if number is not None]


def _initial_from_post(request: HttpRequest) -> dict[str, Any]:
    data: dict[str, Any] = {
        name: request.POST.get(name, "")
        for name in (
            "sender",
            "recipients",
            "subject",
            "patient_id",
            "patient_last_name",
            "patient_first_name",
            "body",
        )
    }
    data["subject_reviewed"] = bool(request.POST.get("subject_reviewed"))
    data["patient_consent"] = bool(request.POST.get("patient_consent"))
    return data


def _compose_response(
    request: HttpRequest,
    state: ComposeState,
    form: ComposeForm,
    *,
    recipients_text: str,
    sender_address: str,
    confirmed: Sequence[str],
    kept: Sequence[int] | None,
    status: int = 200,
) -> HttpResponse:
    user = signed_in_user(request)
    try:
        sender: Mailbox | None = sending_mailbox(user, sender_address)
    except MessagingError:
        sender = None
    original = state.original
    forwarded = []
    if original is not None and original.forward:
        keep = set(range(len(original.message.attachments))) if kept is None else set(kept)
        forwarded = [
            {"index": i, "name": safe_filename(a.filename), "size": len(a.data), "kept": i in keep}
            for i, a in enumerate(original.message.attachments)
        ]
    forwarded_large = []
    if original is not None and original.forward:
        parts = original.message.external_parts
        keep = set(range(len(parts))) if kept is None else set(original.kept_large)
        forwarded_large = [
            {
                "index": i,
                "name": safe_filename(p.filename),
                "size": p.plaintext_size,
                "kept": i in keep,
            }
            for i, p in enumerate(parts)
        ]
    return render(
        request,
        "webmail/compose.html",
        {
            "sidebar": _sidebar(user, None, ""),
            "form": form,
            "state": state,
            "checks": check_recipients(sender, _split(recipients_text), confirmed),
            "forwarded": forwarded,
            "forwarded_large": forwarded_large,
            "forward_patient": (
                patient_text(original.message.patient_id) if original and original.forward else ""
            ),
            "original_copy": state.original_copy,
            "inline_limit": inline_limit(),
            "streamed_limit": max_attachment_bytes(),
            "unlock_url": _unlock_url(request),
            "action_url": request.get_full_path(),
        },
        status=status,
    )


@csrf_exempt
@login_required
def compose_view(request: HttpRequest) -> HttpResponse:
    return _compose_entry(request, None, forward=False)


@csrf_exempt
@login_required
def reply_view(request: HttpRequest, message_id: str) -> HttpResponse:
    return _compose_entry(request, message_id, forward=False)


@csrf_exempt
@login_required
def forward_view(request: HttpRequest, message_id: str) -> HttpResponse:
    return _compose_entry(request, message_id, forward=True)


def _compose_entry(request: HttpRequest, message_id: str | None, *, forward: bool) -> HttpResponse:
    """Attachments are plaintext: their upload handler is set before the body is read.

    That is why these views are exempted from the CSRF middleware (which reads
    the body) and protected by ``csrf_protect`` on the inner view instead
    (Django: "Upload Handlers", modifying them on the fly).
    """
    if request.method != "POST":
        return _compose(request, message_id, forward, None)
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        announced = 0
    if announced > request_limit():
        return render(
            request,
            "webmail/too_large.html",
            {"limit": max_attachment_bytes(), "back": request.get_full_path()},
            status=413,
        )
    handler = seal_uploads_as_they_come(request, signed_in_user(request))
    try:
        return _compose(request, message_id, forward, handler)
    finally:
        # Whatever happened (a refusal, an error, a lost connection): what this request
        # encrypted and no send took goes now.
        handler.close()


@csrf_protect
@never_cache
def _compose(
    request: HttpRequest,
    message_id: str | None,
    forward: bool,
    handler: SealingUploadHandler | None,
) -> HttpResponse:
    if request.method not in ("GET", "POST"):
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    user = signed_in_user(request)
    found = _copy(request, message_id) if message_id is not None else None
    if isinstance(found, HttpResponse):
        return found  # not the caller's: the same 404 whatever else holds
    own = personal_mailbox(user)
    senders = [r.mailbox.address for r in reachable_mailboxes(user) if r.mailbox.active]
    if own is None or not senders:
        return render(request, "webmail/no_mailbox.html")
    if user.custody != Custody.VAULT:
        return render(request, "webmail/workstation.html")
    state = ComposeState(
        mode="forward" if forward else "reply" if message_id else "new", senders=senders
    )
    if found is not None:
        keys, failure = _keys(request, found.mailbox)
        if failure == "vault_locked":
            if request.method == "GET":
                return HttpResponseRedirect(_unlock_url(request))
            # What was typed stays on the page; the original opens once the key does.
            state.errors.append(_locked_error())
            return _compose_again(request, state)
        opened = _open(request, found, keys) if keys else OpenedCopy(found, Signature(failure))
        if opened.message is None:
            messages.error(request, opened.signature.reason)
            return HttpResponseRedirect(
                _message_url(found.message.public_id, found.mailbox.address)
            )
        state.original = Original(
            found,
            opened.message,
            forward,
            tuple(_kept(request)),
            tuple(_kept(request, "keep_large")),
        )
        state.original_copy = found
        known = identities([found.message.sender_address]).get(found.message.sender_address.lower())
        state.original_author = known.name if known else found.message.sender_address
    elif request.method == "GET" and _keys(request, own)[1] == "vault_locked":
        return HttpResponseRedirect(_unlock_url(request))
    if request.method == "GET":
        return _compose_get(request, state, own)
    return _compose_post(request, state, handler)


def _locked_error() -> dict[str, Any]:
    return {
        "code": "vault_locked",
        "message": _("Votre clé est verrouillée : saisissez votre phrase de déverrouillage."),
        "unlock": True,
    }


def _compose_again(request: HttpRequest, state: ComposeState) -> HttpResponse:
    """The page as posted, with ``state.errors``: nothing was sent, attachments are not kept."""
    data = _initial_from_post(request)
    state.files_dropped = bool(request.FILES)
    return _compose_response(
        request,
        state,
        ComposeForm(initial=data, senders=state.senders),
        recipients_text=str(data["recipients"]),
        sender_address=str(data["sender"]),
        confirmed=[a[:254] for a in request.POST.getlist("confirm")][:50],
        kept=_kept(request),
        status=400,
    )


def _compose_get(request: HttpRequest, state: ComposeState, own: Mailbox) -> HttpResponse:
    initial: dict[str, Any] = {"sender": own.address, "recipients": request.GET.get("a", "")[:4000]}
    original, copy = state.original, state.original_copy
    if original is not None and copy is not None:
        inner = original.message
        if copy.mailbox.address in state.senders:
            initial["sender"] = copy.mailbox.address
        if original.forward:
            initial["subject"] = _prefixed(_("TR : "), inner.subject)
            initial["body"] = _forwarded(copy, inner, state.original_author)
        else:
            if not copy.is_sender_copy:
                initial["recipients"] = copy.message.sender_address
            initial["subject"] = _prefixed(_("RE : "), inner.subject)
            initial["body"] = _quote(copy, inner, state.original_author)
            initial["patient_id"] = (inner.patient_id or "").partition(":")[2]
    form = ComposeForm(initial=initial, senders=state.senders)
    return _compose_response(
        request,
        state,
        form,
        recipients_text=str(initial["recipients"]),
        sender_address=str(initial["sender"]),
        confirmed=[],
        kept=None,
    )


def _refusal_status(refusal: MessagingError | None) -> int:
    if refusal is None:
        return 200
    return 413 if refusal.code == "attachments_too_large" else 400


def _compose_post(
    request: HttpRequest, state: ComposeState, handler: SealingUploadHandler | None
) -> HttpResponse:
    data = _initial_from_post(request)
    confirmed = [a[:254] for a in request.POST.getlist("confirm")][:50]
    kept = _kept(request)
    refusal = handler.refusal if handler is not None else None
    if refusal is None and END_FIELD not in request.POST:
        # The body was cut short (a connection lost during a long upload): its last
        # attachment may be truncated; nothing of it is sent.
        refusal = MessagingError(
            "upload_interrupted",
            _("L'envoi du formulaire a été interrompu : joignez les pièces et envoyez de nouveau."),
        )
    uploads, streamed = ([], []) if refusal is not None else _uploads(request)
    added = request.POST.get("add_recipient", "").strip()[:254]
    action = request.POST.get("action", "send")
    if added or action == "search" or refusal is not None:
        # A step of the page, not a send: nothing is checked nor kept but the text typed.
        if added:
            current = _split(str(data["recipients"]))
            if added.lower() not in {a.lower() for a in current}:
                current.append(added)
            data["recipients"] = ", ".join(current)
        if action == "search" and not added:
            state.query = request.POST.get("q", "")[:100]
            state.suggestions = suggestions(state.query)
            state.searched = len(state.query.strip()) >= 2
        if refusal is not None:
            state.errors.append({"code": refusal.code, "message": refusal.message})
        state.files_dropped = bool(uploads or streamed) or refusal is not None
        form = ComposeForm(initial=data, senders=state.senders)
        return _compose_response(
            request,
            state,
            form,
            recipients_text=str(data["recipients"]),
            sender_address=str(data["sender"]),
            confirmed=confirmed,
            kept=kept,
            status=_refusal_status(refusal),
        )
    form = ComposeForm(request.POST, senders=state.senders)
    if form.is_valid():
        outgoing = Outgoing(
            from_address=form.cleaned_data["sender"],
            recipients=form.recipient_list(),
            subject=form.cleaned_data["subject"],
            body=form.cleaned_data["body"],
            patient_id=form.cleaned_data["patient_id"],
            patient_names=[
                form.cleaned_data["patient_last_name"],
                form.cleaned_data["patient_first_name"],
            ],
            attachments=uploads,
            streamed=streamed,
            confirmed=frozenset(confirmed),
            subject_reviewed=form.cleaned_data["subject_reviewed"],
            patient_consent=form.cleaned_data["patient_consent"],
        )
        try:
            message = send_from_web(
                request, signed_in_user(request), outgoing, original=state.original
            )
        except CustodyError as error:
            state.errors.append(
                _locked_error()
                if error.code == "vault_locked"
                else {"code": error.code, "message": error.message}
            )
        except MessagingError as error:
            state.errors.append(
                {"code": error.code, "message": error.message, "details": error.details}
            )
            state.review = error.code == "subject_needs_review"
        else:
            messages.success(request, _("Message envoyé."))
            return HttpResponseRedirect(_message_url(message.public_id, message.sender_address))
    state.files_dropped = bool(uploads or streamed)
    state.review = state.review or bool(request.POST.get("subject_reviewed"))
    return _compose_response(
        request,
        state,
        form,
        recipients_text=str(data["recipients"]),
        sender_address=str(data["sender"]),
        confirmed=confirmed,
        kept=kept,
        status=400,
    )

"""Messages as the server holds them: routing metadata and a pointer to ciphertext.

DESIGN "What the server sees": sender and recipient addresses, times, sizes,
states of delivery. There is no subject, body, attachment or file name here,
nor anywhere on the server (REQ-AT-REST, REQ-E2E): the message itself is the
CMS envelope sealed on the sender's workstation, kept either in the database
(:class:`MessageEnvelope`, up to ``PLI_ENVELOPE_IN_DATABASE_BYTES``: written
and made durable by the send's own commit, decision 0013) or in the blob store
(:mod:`pli.server.blobs`) under ``envelope_blob``. The patient identifier
declared for the opposition check is kept only as a keyed hash.

Three tables, and the small envelopes':

* :class:`Message`: one per send, shared by everyone who has it;
* :class:`Delivery`: one per recipient mailbox, its state (what the sender sees);
* :class:`MessageCopy`: one per mailbox that holds the message (each recipient
  mailbox, and the sending mailbox, whose copy is in "sent"), with that
  mailbox's folder, read and flagged marks. Recipients never see each other
  (REQ-FEW-RECIPIENTS): a recipient's copy links only to its own delivery.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from pli.server.directory.models import Mailbox

#: ``msg_`` + 32 hexadecimal digits: opaque, unguessable (128 random bits).
MESSAGE_ID_LENGTH = 36
THREAD_ID_LENGTH = 36


class Folder(models.TextChoices):
    INBOX = "inbox", _("Boîte de réception")
    SENT = "sent", _("Envoyés")
    ARCHIVE = "archive", _("Archives")
    TRASH = "trash", _("Corbeille")


class DeliveryState(models.TextChoices):
    QUEUED = "queued", _("En attente")
    DELIVERED = "delivered", _("Distribué")
    READ = "read", _("Lu")
    FAILED = "failed", _("Échec")


class Message(models.Model):
    public_id = models.CharField(_("identifiant"), max_length=MESSAGE_ID_LENGTH)
    #: The mailbox the message was sent from (personal or organisational, REQ-CITY-HOSPITAL);
    #: its address is copied, so the record outlives a directory entry.
    sender_mailbox = models.ForeignKey(
        Mailbox, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sender_address = models.CharField(_("expéditeur"), max_length=254)
    #: The person who sent it (for an organisational mailbox, which member); copied too:
    #: accounts are deleted after a year of inactivity (REQ-INACTIVE-DELETE).
    sender_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    sender_person = models.CharField(_("rédacteur"), max_length=254)
    created_at = models.DateTimeField(_("envoyé le"), default=timezone.now)
    #: Bytes of the envelope as stored.
    size = models.PositiveBigIntegerField(_("taille"))
    #: Id of the CMS EnvelopedData in the blob store, empty when it is kept in the database
    #: (:class:`MessageEnvelope`); its SHA-256 either way (integrity, REQ-AT-REST).
    envelope_blob = models.CharField(max_length=64, blank=True)
    envelope_sha256 = models.CharField(max_length=64)
    thread_id = models.CharField(_("fil"), max_length=THREAD_ID_LENGTH)
    in_reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    #: HMAC-SHA-256 of the normalised patient identifier (REQ-OPPOSITION), or empty.
    patient_key = models.CharField(max_length=64, blank=True)
    #: A read receipt, stored by its reader's ``POST …/read``: not acknowledged in turn
    #: (two mailboxes could otherwise answer each other's receipts without end, outside
    #: the daily limits). ``db_default``: the send's own INSERT statements may leave it out.
    receipt = models.BooleanField(_("accusé de lecture"), default=False, db_default=False)

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        constraints = [
            # Not unique=True: no varchar_pattern_ops twin index on PostgreSQL.
            models.UniqueConstraint(fields=["public_id"], name="messaging_message_public_id_uniq"),
        ]
        indexes = [models.Index(fields=["thread_id"], name="messaging_message_thread_idx")]

    def __str__(self) -> str:
        return self.public_id


class MessageEnvelope(models.Model):
    """A small envelope's ciphertext, in the database beside its message (decision 0013).

    Its own table, so that listings, which read :class:`Message` rows by the
    page, never carry the envelopes' bytes. Only ciphertext: the CMS
    EnvelopedData as the client sealed it (REQ-AT-REST).
    """

    message = models.OneToOneField(
        Message, primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    data = models.BinaryField()

    class Meta:
        verbose_name = _("enveloppe chiffrée")
        verbose_name_plural = _("enveloppes chiffrées")

    def __str__(self) -> str:
        return f"{self.message_id} ({len(self.data)} octets)"


class Delivery(models.Model):
    # No index of its own: messaging_one_delivery_each (message, recipient_address) begins
    # with it. Every index is one more insertion per delivery (benchmarks/README.md).
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    recipient_mailbox = models.ForeignKey(
        Mailbox, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recipient_address = models.CharField(_("destinataire"), max_length=254)
    state = models.CharField(_("état"), max_length=16, choices=DeliveryState.choices)
    delivered_at = models.DateTimeField(_("distribué le"), null=True, blank=True)
    read_at = models.DateTimeField(_("lu le"), null=True, blank=True)

    class Meta:
        verbose_name = _("distribution")
        verbose_name_plural = _("distributions")
        constraints = [
            models.UniqueConstraint(
                fields=["message", "recipient_address"], name="messaging_one_delivery_each"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.recipient_address}"


class MessageCopy(models.Model):
    """A mailbox's copy of a message: its folder and marks, shared by the mailbox's members."""

    # Neither has an index of its own: messaging_one_copy_each (message, mailbox) and
    # messaging_copy_folder_idx (mailbox, folder, created_at) begin with them.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="copies", db_index=False
    )
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+", db_index=False)
    #: The recipient's own delivery; None for the sending mailbox's copy.
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    folder = models.CharField(_("dossier"), max_length=16, choices=Folder.choices)
    read = models.BooleanField(_("lu"), default=False)
    flagged = models.BooleanField(_("suivi"), default=False)
    created_at = models.DateTimeField(_("reçu le"), default=timezone.now)

    class Meta:
        verbose_name = _("copie de message")
        verbose_name_plural = _("copies de messages")
        constraints = [
            models.UniqueConstraint(fields=["message", "mailbox"], name="messaging_one_copy_each"),
        ]
        indexes = [
            # A folder's listing, newest first; unread counts.
            models.Index(
                fields=["mailbox", "folder", "-created_at"], name="messaging_copy_folder_idx"
            ),
        ]

    @property
    def is_sender_copy(self) -> bool:
        return self.delivery_id is None

    def __str__(self) -> str:
        return f"{self.message_id} @ {self.mailbox_id} ({self.folder})"


class SendUsage(models.Model):
    """What a person sent on one day: messages and bytes, for the daily limits.

    Counted by the send's own statement (:mod:`pli.server.messaging.allowance`):
    a row per person, day and *shard*. On PostgreSQL the shard is the database
    connection's (its backend's process id, modulo
    :data:`~pli.server.messaging.allowance.SHARDS`), so that concurrent sends of
    one person (practice software on several connections) do not queue on one
    row's lock until each commits; the day's usage is the sum of its shards.
    The daily job removes past days (``send_usage``).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    #: The server's local date (``TIME_ZONE``): the limits start again at midnight.
    day = models.DateField(_("jour"))
    shard = models.PositiveSmallIntegerField(default=0)
    messages = models.PositiveIntegerField(_("messages"), default=0)
    #: Envelopes and streamed attachments, as stored (ciphertext).
    bytes = models.PositiveBigIntegerField(_("octets"), default=0)

    class Meta:
        verbose_name = _("envois du jour")
        verbose_name_plural = _("envois du jour")
        constraints = [
            models.UniqueConstraint(
                fields=["user", "day", "shard"], name="messaging_send_usage_shard"
            ),
        ]
        indexes = [models.Index(fields=["day"], name="messaging_send_usage_day_idx")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day} #{self.shard}"


class MailboxStorage(models.Model):
    """What a mailbox holds, in bytes as stored: its quota's measure.

    The sum of the sizes of the messages it has a copy of (envelope and streamed
    attachments, ciphertext), kept by each send and each deletion for good
    (:mod:`pli.server.messaging.storage`) rather than summed at every send. A
    row per mailbox and *shard*, as :class:`SendUsage`: on PostgreSQL each
    database connection adds to its own row, so that concurrent sends to one
    mailbox (a laboratory's, a ward's) do not queue on one row's lock; the
    mailbox's usage is the sum of its rows. A row may be negative (a deletion
    counted on another connection's shard). The daily job ``mailbox_storage``
    counts every mailbox again from its copies.
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+", db_index=False)
    shard = models.PositiveSmallIntegerField(default=0)
    bytes = models.BigIntegerField(_("octets"), default=0)

    class Meta:
        verbose_name = _("espace utilisé")
        verbose_name_plural = _("espace utilisé")
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "shard"], name="messaging_storage_shard"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox_id} #{self.shard}"


class MailboxQuota(models.Model):
    """A mailbox's own quota, set by the operator (``pli storage quota``); without one,
    ``PLI_MAILBOX_QUOTA_BYTES`` applies."""

    mailbox = models.OneToOneField(
        Mailbox, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    bytes = models.PositiveBigIntegerField(_("octets"))

    class Meta:
        verbose_name = _("quota de boîte")
        verbose_name_plural = _("quotas de boîte")

    def __str__(self) -> str:
        return f"{self.mailbox_id}: {self.bytes}"


# Large attachments: their models live with their logic in uploads.py; imported here,
# after the models they refer to, so that Django's app registry (and migrations) know them.
from pli.server.messaging.uploads import MessageBlob, Upload  # noqa: E402, F401

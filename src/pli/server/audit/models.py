"""The audit trail: append-only, hash-chained events and signed checkpoints (REQ-TRACE).

An event says who (actor id, login and role, copied as plain values: accounts
are deleted after a year of inactivity, REQ-INACTIVE-DELETE, and the trail must
outlive them, REQ-DATA-ADMIN), did what (a code of :class:`AuditAction`), to
what (identifiers only), from where (address, user agent), with which outcome.
Never health data, a subject, a file name or message content: ``target`` and
``detail`` only admit short codes (see :mod:`pli.server.audit.chain`).

Each event carries the SHA-256 of its predecessor's canonical form and its own;
a checkpoint signs the position and hash of one event with the operator audit
key. Rows are never updated; they are deleted only once older than the
retention period (REQ-TRACE-RETENTION), by ``purge_expired_events``. The
database refuses the rest on PostgreSQL (migration 0002).
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class AuditAction(models.TextChoices):
    """Every action the trail knows; :func:`do_record_event` refuses any other code.

    A stable dotted code ``<area>.<what happened>``: codes are part of the
    exported trail, so never rename one, add new ones (and their French label).
    Not a ``choices`` of the model field, so that adding one needs no migration.
    """

    # Authentication (REQ-AUTH-STRONG, REQ-TRACE).
    AUTH_LOGIN = "auth.login", _("Connexion")
    AUTH_LOGIN_FAILED = "auth.login_failed", _("Échec de connexion")
    AUTH_LOCKOUT = "auth.lockout", _("Blocage après échecs répétés")
    AUTH_LOGOUT = "auth.logout", _("Déconnexion")
    # Accounts and enrolment.
    ACCOUNTS_INVITED = "accounts.invited", _("Invitation envoyée")
    ACCOUNTS_ACCESS_REQUESTED = "accounts.access_requested", _("Demande d'accès")
    ACCOUNTS_ACTIVATED = "accounts.activated", _("Compte activé")
    ACCOUNTS_PASSPHRASE_SET = "accounts.passphrase_set", _("Phrase de passe définie")
    ACCOUNTS_CHARTER_ACKNOWLEDGED = "accounts.charter_acknowledged", _("Charte acceptée")
    ACCOUNTS_ENROLLED = "accounts.enrolled", _("Inscription terminée")
    ACCOUNTS_FACTOR_ADDED = "accounts.factor_added", _("Facteur d'authentification ajouté")
    ACCOUNTS_FACTOR_REMOVED = "accounts.factor_removed", _("Facteur d'authentification retiré")
    ACCOUNTS_RECOVERY_CODE_USED = "accounts.recovery_code_used", _("Code de secours utilisé")
    ACCOUNTS_SESSION_REVOKED = "accounts.session_revoked", _("Session révoquée")
    ACCOUNTS_SEND_LIMITS_CHANGED = (
        "accounts.send_limits_changed",
        _("Limites d'envoi quotidiennes d'un compte modifiées"),
    )
    # Inactive accounts (REQ-INACTIVE-DELETE): the warning, then the deletion.
    LIFECYCLE_WARNED = "lifecycle.warned", _("Avertissement d'inactivité")
    LIFECYCLE_DELETED = "lifecycle.deleted", _("Compte inactif supprimé")
    # Key custody.
    KEYS_CREATED = "keys.created", _("Clé de boîte créée")
    KEYS_CERTIFICATE_ISSUED = "keys.certificate_issued", _("Certificat de boîte émis")
    KEYS_CERTIFICATE_REVOKED = "keys.certificate_revoked", _("Certificat de boîte révoqué")
    KEYS_UNLOCKED = "keys.unlocked", _("Clé déverrouillée")
    KEYS_REWRAPPED = "keys.rewrapped", _("Clé rechiffrée sous une nouvelle phrase de passe")
    KEYS_SHARED = "keys.shared", _("Clé de boîte partagée avec un membre")
    KEYS_UNSHARED = "keys.unshared", _("Partage de clé retiré")
    KEYS_ROTATED = "keys.rotated", _("Clé de boîte renouvelée")
    # Messaging (REQ-TRACE, REQ-E2E): message ids and counts, never a subject or an address.
    MESSAGES_SENT = "messages.sent", _("Message envoyé")
    MESSAGES_DELIVERED = "messages.delivered", _("Message distribué")
    MESSAGES_OPENED = "messages.opened", _("Enveloppe de message téléchargée")
    MESSAGES_READ = "messages.read", _("Message lu")
    MESSAGES_MOVED = "messages.moved", _("Message déplacé")
    MESSAGES_FLAGGED = "messages.flagged", _("Suivi d'un message modifié")
    MESSAGES_DELETED = "messages.deleted", _("Message supprimé")
    MESSAGING_MAILBOX_QUOTA_CHANGED = (
        "messaging.mailbox_quota_changed",
        _("Quota d'une boîte modifié"),
    )
    # Operation (REQ-DATA-ADMIN): the admin console, the directory, the trail itself.
    ADMIN_CHANGE = "admin.change", _("Modification dans la console d'administration")
    DIRECTORY_IMPORT = "directory.import", _("Import de l'annuaire")
    AUDIT_EXPORT = "audit.export", _("Export du journal d'audit")
    AUDIT_PURGE = "audit.purge", _("Purge du journal d'audit")
    AUDIT_VERIFY = "audit.verify", _("Vérification du journal d'audit")
    # The opposition register (REQ-OPPOSITION): target "opposition:<id>", never the patient.
    OPPOSITIONS_RECORDED = "oppositions.recorded", _("Opposition d'un patient enregistrée")
    OPPOSITIONS_LIFTED = "oppositions.lifted", _("Opposition d'un patient levée")
    OPPOSITIONS_CHECKED = "oppositions.checked", _("Registre des oppositions consulté")


class AuditOutcome(models.TextChoices):
    SUCCESS = "success", _("Réussite")
    FAILURE = "failure", _("Échec")
    DENIED = "denied", _("Refus")


class AuditEvent(models.Model):
    """One event. ``seq`` is the chain position: 1, 2, 3… with no gap."""

    seq = models.BigIntegerField(_("position"), primary_key=True)
    occurred_at = models.DateTimeField(_("date"), db_index=True)
    #: The account's primary key, login and role when the event happened: plain values.
    actor_id = models.BigIntegerField(_("identifiant du compte"), null=True, blank=True)
    actor_username = models.CharField(_("identifiant de connexion"), max_length=150, blank=True)
    actor_role = models.CharField(_("rôle"), max_length=20, blank=True)
    action = models.CharField(_("action"), max_length=64)
    target = models.CharField(_("cible"), max_length=100, blank=True)
    source_address = models.CharField(_("adresse source"), max_length=45, blank=True)
    user_agent = models.CharField(_("navigateur"), max_length=200, blank=True)
    outcome = models.CharField(_("résultat"), max_length=16)
    #: Canonical JSON (sorted keys) of a few codes and counts, kept as written.
    detail = models.TextField(_("détail"), blank=True)
    prev_hash = models.CharField(_("empreinte précédente"), max_length=64)
    hash = models.CharField(_("empreinte"), max_length=64)

    class Meta:
        verbose_name = _("événement d'audit")
        verbose_name_plural = _("événements d'audit")
        ordering = ["-seq"]
        default_permissions = ("view",)
        indexes = [
            # The admin's list filtered by action, newest first. Not db_index=True: on
            # PostgreSQL that adds a LIKE twin index, one more write per append for nothing.
            models.Index(fields=["action", "seq"], name="audit_event_action_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"


class AuditCheckpoint(models.Model):
    """The operator audit key's signature over (position, hash, time) of one event."""

    event_seq = models.BigIntegerField(_("position de l'événement"), unique=True)
    event_hash = models.CharField(_("empreinte de l'événement"), max_length=64)
    signed_at = models.DateTimeField(_("signé le"), db_index=True)
    #: SHA-256 of the public key (SubjectPublicKeyInfo DER) that verifies ``signature``.
    key_fingerprint = models.CharField(_("empreinte de la clé"), max_length=64)
    signature = models.CharField(_("signature"), max_length=128)

    class Meta:
        verbose_name = _("point de contrôle signé")
        verbose_name_plural = _("points de contrôle signés")
        ordering = ["-event_seq"]
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"#{self.event_seq}"


class AuditPendingEvent(models.Model):
    """An event written in its action's transaction, not chained yet (the journal).

    Decision 0010: on PostgreSQL, a send writes its events here, in the same
    statement as the message, without the chain's lock; right after the commit
    the sequencer (:func:`pli.server.audit.actions.sequence_pending_events`)
    moves them into the chain in ``id`` order and deletes them. The same fields
    as :class:`AuditEvent`, already checked (codes and counts only), minus the
    chain position and the hashes. Rows are never updated (a trigger refuses it);
    the sequencer deletes them once chained, in its own transaction.
    """

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField(_("date"))
    actor_id = models.BigIntegerField(_("identifiant du compte"), null=True, blank=True)
    actor_username = models.CharField(_("identifiant de connexion"), max_length=150, blank=True)
    actor_role = models.CharField(_("rôle"), max_length=20, blank=True)
    action = models.CharField(_("action"), max_length=64)
    target = models.CharField(_("cible"), max_length=100, blank=True)
    source_address = models.CharField(_("adresse source"), max_length=45, blank=True)
    user_agent = models.CharField(_("navigateur"), max_length=200, blank=True)
    outcome = models.CharField(_("résultat"), max_length=16)
    detail = models.TextField(_("détail"), blank=True)

    class Meta:
        verbose_name = _("événement d'audit en attente de chaînage")
        verbose_name_plural = _("événements d'audit en attente de chaînage")
        ordering = ["id"]
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"pending {self.id} {self.action}"

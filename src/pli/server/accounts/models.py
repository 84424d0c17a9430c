"""Accounts: one person, one account, tied to a directory entry (REQ-DIRECTORY).

Enrolment never trusts self-declared identity (REQ-AUTH-STRONG): an account
exists only through an admin invitation or an activation code sent to the
address the directory registers. Secrets are stored as hashes (activation
and recovery codes, passphrases with Argon2id) or encrypted under a key
derived from the server secret (TOTP seeds, which the server must read back).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.translation import gettext_lazy as _

from pli.server.directory.models import Mailbox, Professional


class Role(models.TextChoices):
    PROFESSIONAL = "professional", _("Professionnel")
    OPERATOR_ADMIN = "operator_admin", _("Administrateur de l'opérateur")
    DPO = "dpo", _("Délégué à la protection des données")
    SUPPORT = "support", _("Support")


class Custody(models.TextChoices):
    VAULT = "vault", _("Coffre du serveur (messagerie web)")
    WORKSTATION = "workstation", _("Poste de travail")


class User(AbstractUser):
    """An account. ``username`` is the login identifier (the registered address)."""

    role = models.CharField(
        _("rôle"), max_length=20, choices=Role.choices, default=Role.PROFESSIONAL
    )
    #: One person, one account: a directory entry has at most one account.
    professional = models.OneToOneField(
        Professional,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="account",
        verbose_name=_("professionnel"),
    )
    custody = models.CharField(
        _("garde des clés"), max_length=16, choices=Custody.choices, default=Custody.VAULT
    )
    #: REQ-INACTIVE-DELETE: the clock of the inactivity lifecycle.
    last_authenticated_at = models.DateTimeField(
        _("dernière authentification"), null=True, blank=True
    )
    inactivity_warned_at = models.DateTimeField(null=True, blank=True)
    #: Set when the enrolment (passphrase, factor, recovery codes, charter) is complete.
    enrolled_at = models.DateTimeField(_("inscription terminée"), null=True, blank=True)
    #: This account's daily send limits (pli.server.messaging.allowance), set by the
    #: operator for practice software that sends more; None: PLI_DAILY_SEND_*.
    daily_send_messages = models.PositiveIntegerField(
        _("messages envoyés par jour, au plus"), null=True, blank=True
    )
    daily_send_bytes = models.PositiveBigIntegerField(
        _("octets envoyés par jour, au plus"), null=True, blank=True
    )

    class Meta:
        verbose_name = _("compte")
        verbose_name_plural = _("comptes")

    @property
    def is_operator(self) -> bool:
        return self.role in (Role.OPERATOR_ADMIN, Role.DPO, Role.SUPPORT)


class MembershipRole(models.TextChoices):
    MEMBER = "member", _("Membre")
    MANAGER = "manager", _("Gestionnaire")
    SUBSTITUTE = "substitute", _("Remplaçant")


class Membership(models.Model):
    """A member, manager or substitute of an organisational (or shared) mailbox."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=MembershipRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("membre d'une boîte")
        verbose_name_plural = _("membres des boîtes")
        constraints = [
            models.UniqueConstraint(fields=["user", "mailbox"], name="one_membership_per_mailbox")
        ]


class EnrolmentChannel(models.TextChoices):
    INVITATION = "invitation", _("Invitation par un administrateur")
    REQUEST = "request", _("Demande du professionnel")


class Enrolment(models.Model):
    """A pending enrolment: an activation code sent to the directory's address.

    Only the hash of the code is kept; it expires and allows few attempts.
    """

    professional = models.ForeignKey(
        Professional, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE)
    address = models.CharField(max_length=254)
    channel = models.CharField(max_length=16, choices=EnrolmentChannel.choices)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.PROFESSIONAL)
    code_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("inscription")
        verbose_name_plural = _("inscriptions")


class TotpDevice(models.Model):
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="totp")
    #: The seed, encrypted under a key derived from the server secret.
    sealed_secret = models.BinaryField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    #: RFC 6238 section 5.2: a code is accepted once; this is the last used time step.
    last_step = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)


class WebAuthnCredential(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="webauthn_credentials")
    name = models.CharField(max_length=64)
    credential_id = models.BinaryField()
    credential_id_hash = models.CharField(max_length=64, unique=True)
    public_key = models.BinaryField()
    sign_count = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)


class RecoveryCode(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)


class ClientCertificate(models.Model):
    """A professional certificate (e.g. CPS / IGC-Santé) that logs its holder in."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="client_certificates")
    fingerprint = models.CharField(max_length=64, unique=True)
    subject = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)


class Charter(models.Model):
    """A version of the professional charter (REQ-INFO-PRO); the operator edits the text."""

    version = models.PositiveIntegerField(unique=True)
    text_fr = models.TextField(_("texte (français)"))
    text_en = models.TextField(_("texte (anglais)"), blank=True)
    published_at = models.DateTimeField(_("publiée le"), auto_now_add=True)

    class Meta:
        verbose_name = _("charte")
        verbose_name_plural = _("chartes")
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"v{self.version}"


class CharterAcknowledgement(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="acknowledgements")
    charter = models.ForeignKey(Charter, on_delete=models.PROTECT, related_name="+")
    acknowledged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "charter"], name="one_ack_per_version")
        ]


class UserSession(models.Model):
    """A login session, listed to its owner, who can revoke it."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sessions")
    #: SHA-256 of Django's session key: the key itself is a bearer secret.
    key_hash = models.CharField(max_length=64, unique=True)
    method = models.CharField(max_length=32)
    created_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    source_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=255, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)


class Throttle(models.Model):
    """Failed attempts per account and per source address (brute-force lockout).

    Kept in the database, not a per-process cache, so every worker sees it.
    """

    key = models.CharField(max_length=200, unique=True)
    failures = models.PositiveIntegerField(default=0)
    window_started_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True)


class MailboxKey(models.Model):
    """A mailbox's private key in *vault* custody, wrapped under Argon2id (DESIGN: key custody).

    For an organisational mailbox there is one row per member: the mailbox key
    wrapped to that member's own key.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="mailbox_keys")
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+")
    certificate_fingerprint = models.CharField(max_length=64)
    #: pli.crypto vault record (Argon2id + AES-256-GCM), or a CMS envelope to the member's key.
    wrapped_key = models.BinaryField()
    wrapping = models.CharField(max_length=16, default="passphrase")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "mailbox", "certificate_fingerprint"], name="one_key_per_holder"
            )
        ]

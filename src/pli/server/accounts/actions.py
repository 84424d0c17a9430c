"""State changes of the accounts app: each one transaction, each one audit event.

Enrolment never trusts a self-declared identity (REQ-AUTH-STRONG, DESIGN
"Identity"): an activation code goes to the address the directory registers
for the professional, or to the address an operator admin invited.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from pli.server.accounts import throttle
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import (
    Charter,
    CharterAcknowledgement,
    Enrolment,
    EnrolmentChannel,
    Role,
    TotpDevice,
    User,
    WebAuthnCredential,
)
from pli.server.accounts.sessions import client_address
from pli.server.accounts.tokens import code_hash, new_code
from pli.server.audit.actions import do_record_event
from pli.server.directory.actions import BadAddress, normalise_address
from pli.server.directory.models import Mailbox, MailboxType, Professional

ACTIVATION_VALIDITY = dt.timedelta(hours=72)
ACTIVATION_ATTEMPTS = 5


def _send_activation(address: str, code: str, channel: str) -> None:
    # French first: the professionals' language; the code is the only secret in it.
    with translation.override("fr"):
        body = render_to_string(
            "accounts/email/activation.txt",
            {
                "code": code,
                "hours": int(ACTIVATION_VALIDITY.total_seconds() // 3600),
                "invited": channel == EnrolmentChannel.INVITATION,
                "base_url": settings.PLI_BASE_URL,
            },
        )
        send_mail(
            _("Pli : votre code d'activation"),
            body,
            settings.DEFAULT_FROM_EMAIL,
            [address],
        )


def registered_mailbox(address: str) -> Mailbox | None:
    """An active, personal mailbox of an active professional of the directory."""
    return (
        Mailbox.objects.select_related("professional")
        .filter(
            address=address,
            active=True,
            kind=MailboxType.PERSONAL,
            professional__isnull=False,
            professional__active=True,
        )
        .first()
    )


def _new_enrolment(
    address: str, channel: str, role: str, *, mailbox: Mailbox | None, inviter: User | None
) -> str:
    code = new_code()
    Enrolment.objects.filter(address=address, used_at__isnull=True).delete()
    Enrolment.objects.create(
        professional=mailbox.professional if mailbox else None,
        address=address,
        channel=channel,
        role=role,
        code_hash=code_hash(code, "activation"),
        invited_by=inviter,
        expires_at=timezone.now() + ACTIVATION_VALIDITY,
    )
    return code


def do_invite_account(
    inviter: User | None,
    address: str,
    role: str = Role.PROFESSIONAL,
    request: HttpRequest | None = None,
) -> Enrolment:
    """An operator admin invites a directory entry (or a staff member for operator roles)."""
    return invite_with_code(inviter, address, role, request)[0]


@transaction.atomic
def invite_with_code(
    inviter: User | None,
    address: str,
    role: str = Role.PROFESSIONAL,
    request: HttpRequest | None = None,
) -> tuple[Enrolment, str]:
    """The invitation and its plain code (mailed; also shown by ``pli accounts invite``).

    *inviter* is None only for the command run on the server itself by its
    operator, who bootstraps the first administrator that way.
    """
    try:
        address = normalise_address(address)
    except BadAddress:
        raise AccountError("bad_address", _("Adresse de messagerie invalide.")) from None
    if inviter is not None and inviter.role != Role.OPERATOR_ADMIN:
        raise AccountError("not_allowed", _("Seul un administrateur peut inviter."))
    if role not in Role.values:
        raise AccountError("bad_role", _("Rôle inconnu."))
    mailbox = registered_mailbox(address)
    if role == Role.PROFESSIONAL and mailbox is None:
        raise AccountError(
            "not_in_directory",
            _("Cette adresse n'est pas une boîte personnelle active de l'annuaire."),
        )
    if User.objects.filter(username=address).exists() or (
        mailbox is not None and User.objects.filter(professional=mailbox.professional).exists()
    ):
        raise AccountError("already_enrolled", _("Un compte existe déjà pour cette personne."))
    code = _new_enrolment(
        address, EnrolmentChannel.INVITATION, role, mailbox=mailbox, inviter=inviter
    )
    enrolment = Enrolment.objects.get(code_hash=code_hash(code, "activation"))
    do_record_event(
        "accounts.invited",
        actor=inviter,
        request=request,
        target=f"enrolment:{enrolment.pk}",
        detail={"role": role},
    )
    transaction.on_commit(lambda: _send_activation(address, code, EnrolmentChannel.INVITATION))
    return enrolment, code


@transaction.atomic
def do_set_send_limits(
    actor: User | None,
    login: str,
    *,
    messages: int | None,
    size: int | None,
    request: HttpRequest | None = None,
) -> User:
    """Set an account's own daily send limits (``pli.server.messaging.allowance``).

    ``messages`` / ``size``: the most messages and bytes the account may send
    per day; None returns that limit to the operator's default
    (``PLI_DAILY_SEND_*``). For practice software that sends more than a person
    does (a laboratory's results), or to hold back one account. Audited with the
    new values (counts, never content). *actor* is None only for the operator's
    command on the server itself; otherwise an operator admin.
    """
    if actor is not None and actor.role != Role.OPERATOR_ADMIN:
        raise AccountError(
            "not_allowed", _("Seul un administrateur peut modifier les limites d'envoi.")
        )
    # The columns' ranges: an integer, and a 64-bit one for bytes (PostgreSQL's types).
    for value, most in ((messages, 2**31 - 1), (size, 2**63 - 1)):
        if value is not None and not 1 <= value <= most:
            raise AccountError(
                "bad_limit",
                _("Une limite d'envoi est un nombre entier de 1 à %(most)s.") % {"most": most},
            )
    user = User.objects.select_for_update().filter(username=login.strip().lower()).first()
    if user is None:
        raise AccountError("not_found", _("Aucun compte ne porte cet identifiant."))
    user.daily_send_messages = messages
    user.daily_send_bytes = size
    user.save(update_fields=["daily_send_messages", "daily_send_bytes"])
    do_record_event(
        "accounts.send_limits_changed",
        actor=actor,
        request=request,
        target=f"user:{user.pk}",
        detail={"messages": messages or 0, "bytes": size or 0},
    )
    return user


@transaction.atomic
def do_request_access(address: str, request: HttpRequest | None) -> None:
    """A professional asks for access; the code goes to the directory's address only.

    The caller answers the same whatever happens here (no account enumeration).
    """
    try:
        address = normalise_address(address)
    except BadAddress:
        return
    mailbox = registered_mailbox(address)
    if mailbox is None or User.objects.filter(professional=mailbox.professional).exists():
        return
    code = _new_enrolment(
        address, EnrolmentChannel.REQUEST, Role.PROFESSIONAL, mailbox=mailbox, inviter=None
    )
    do_record_event("accounts.access_requested", request=request, target=f"mailbox:{mailbox.pk}")
    transaction.on_commit(lambda: _send_activation(address, code, EnrolmentChannel.REQUEST))


def do_activate_enrolment(address: str, code: str, request: HttpRequest) -> User:
    """The activation code is right: the account exists (not yet usable until enrolled)."""
    keys = (throttle.account_key(address), throttle.address_key(client_address(request)))
    if throttle.locked(*keys):
        raise AccountError("locked", _("Trop d'essais. Réessayez plus tard."))
    try:
        address = normalise_address(address)
    except BadAddress:
        address = address.strip().lower()
    with transaction.atomic():
        now = timezone.now()
        enrolment = (
            Enrolment.objects.select_for_update()
            .filter(address=address, used_at__isnull=True, expires_at__gt=now)
            .first()
        )
        matches = enrolment is not None and enrolment.code_hash == code_hash(code, "activation")
        if enrolment is not None and not matches:
            enrolment.attempts += 1
            if enrolment.attempts >= ACTIVATION_ATTEMPTS:
                enrolment.used_at = now  # burnt: a new code must be asked for
            enrolment.save(update_fields=["attempts", "used_at"])
        if enrolment is None or not matches:
            pass
        else:
            user = _create_account(enrolment)
            enrolment.used_at = now
            enrolment.user = user
            enrolment.save(update_fields=["used_at", "user"])
            do_record_event(
                "accounts.activated", actor=user, request=request, target=f"user:{user.pk}"
            )
            return user
    # A lockout is a failure in the trail, as for the other login steps (REQ-TRACE).
    throttle.record_failure_audited(request, None, *keys)
    raise AccountError("bad_code", _("Code d'activation incorrect ou expiré."))


#: What the console shows each operator role, read-only (REQ-ADMIN-LIMITS, REQ-DATA-ADMIN):
#: no role has any view of message content, subjects or attachments.
_CONSOLE_VIEWS = {
    Role.DPO: ("audit", "directory", "accounts"),
    Role.SUPPORT: ("directory", "accounts"),
}


def _grant_console_views(user: User) -> None:
    from django.contrib.auth.models import Permission  # noqa: PLC0415

    apps = _CONSOLE_VIEWS.get(Role(user.role), ())
    if apps:
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label__in=apps, codename__startswith="view_"
            )
        )


def _create_account(enrolment: Enrolment) -> User:
    professional = enrolment.professional
    try:
        with transaction.atomic():
            user = User(
                username=enrolment.address,
                email=enrolment.address,
                role=enrolment.role,
                professional=professional,
                first_name=(professional.first_name if professional else "")[:150],
                last_name=(professional.last_name if professional else "")[:150],
                is_staff=enrolment.role != Role.PROFESSIONAL,
                is_superuser=enrolment.role == Role.OPERATOR_ADMIN,
            )
            user.set_unusable_password()
            user.save()
            _grant_console_views(user)
    except IntegrityError:
        raise AccountError(
            "already_enrolled", _("Un compte existe déjà pour cette personne.")
        ) from None
    return user


@transaction.atomic
def do_set_passphrase(user: User, passphrase: str, request: HttpRequest | None) -> None:
    try:
        validate_password(passphrase, user)
    except ValidationError as error:
        raise AccountError("weak_passphrase", " ".join(error.messages)) from None
    user.set_password(passphrase)
    user.save(update_fields=["password"])
    do_record_event(
        "accounts.passphrase_set", actor=user, request=request, target=f"user:{user.pk}"
    )


def current_charter() -> Charter | None:
    return Charter.objects.order_by("-version").first()


def needs_charter(user: User) -> bool:
    charter = current_charter()
    return (
        charter is not None
        and not CharterAcknowledgement.objects.filter(user=user, charter=charter).exists()
    )


@transaction.atomic
def do_acknowledge_charter(user: User, version: int, request: HttpRequest | None) -> None:
    """REQ-INFO-PRO: acknowledgements are recorded per version of the charter."""
    charter = current_charter()
    if charter is None or charter.version != version:
        raise AccountError("charter_changed", _("La charte a changé : relisez-la."))
    _ack, created = CharterAcknowledgement.objects.get_or_create(user=user, charter=charter)
    if created:
        do_record_event(
            "accounts.charter_acknowledged",
            actor=user,
            request=request,
            target=f"user:{user.pk}",
            detail={"version": charter.version},
        )


def has_second_factor(user: User) -> bool:
    return (
        TotpDevice.objects.filter(user=user, confirmed_at__isnull=False).exists()
        or WebAuthnCredential.objects.filter(user=user).exists()
    )


def passphrase_login_refusal(user: User) -> AccountError | None:
    """Why a person whose passphrase is right may not go on to the second factor (the web
    and the API logins): the professional left the directory (``account_inactive``, as
    the card and OpenID Connect logins answer), or an enrolled account has no second
    factor (``no_second_factor``: never a login on the passphrase alone). None: go on."""
    if not in_directory(user):
        return AccountError(
            "account_inactive",
            _("Ce compte n'est plus actif : le professionnel n'est plus dans l'annuaire."),
        )
    if user.enrolled_at is not None and not has_second_factor(user):
        return AccountError(
            "no_second_factor",
            _(
                "Aucun second facteur n'est enregistré pour ce compte :"
                " adressez-vous à l'administrateur de votre opérateur."
            ),
        )
    return None


def in_directory(user: User) -> bool:
    """Whether the account's professional is still in the directory (an operator's own
    accounts have none). The card and OpenID Connect logins refuse the others too."""
    return (
        user.professional_id is None
        or Professional.objects.filter(pk=user.professional_id, active=True).exists()
    )


@transaction.atomic
def do_finish_enrolment(user: User, request: HttpRequest | None) -> None:
    if (
        not user.has_usable_password()
        and user.custody == "vault"
        and not user.client_certificates.exists()
    ):
        raise AccountError("enrolment_incomplete", _("Choisissez d'abord une phrase secrète."))
    if not has_second_factor(user):
        raise AccountError("enrolment_incomplete", _("Enregistrez d'abord un second facteur."))
    if needs_charter(user):
        raise AccountError("enrolment_incomplete", _("Prenez d'abord connaissance de la charte."))
    if user.enrolled_at is None:
        user.enrolled_at = timezone.now()
        user.save(update_fields=["enrolled_at"])
        do_record_event("accounts.enrolled", actor=user, request=request, target=f"user:{user.pk}")


@transaction.atomic
def do_record_factor(user: User, kind: str, added: bool, request: HttpRequest | None) -> None:
    do_record_event(
        "accounts.factor_added" if added else "accounts.factor_removed",
        actor=user,
        request=request,
        target=f"user:{user.pk}",
        detail={"factor": kind},
    )

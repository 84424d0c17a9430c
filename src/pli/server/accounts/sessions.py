"""Login sessions: completion of a login, the session registry, timeouts.

REQ-AUTH-STRONG and the issue's session rules: a session exists only after
every required factor; its Django key is rotated at login; it is recorded
(hashed) so its owner can list and revoke it; it ends after an idle period
(``PLI_SESSION_IDLE_MINUTES``, default 15) and an absolute lifetime
(``PLI_SESSION_MAX_HOURS``, default 12). Sensitive actions need a recent
authentication (``REAUTH_SECONDS``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import login, logout
from django.db import transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme

from pli.server.accounts import throttle
from pli.server.accounts.models import Charter, CharterAcknowledgement, Role, User, UserSession
from pli.server.accounts.session_auth import BACKEND, loaded_record
from pli.server.accounts.tokens import session_key_hash
from pli.server.audit.actions import do_record_event

#: Session keys (in Django's signed, server-side session).
PENDING = "pli_pending"  # first factor passed: {"user": id, "at": epoch, "method": str}
ENROLLING = "pli_enrolling"  # activation code accepted, enrolment in progress: user id
AUTH_AT = "pli_auth_at"  # epoch of the last full authentication (re-authentication)
LOGIN_NEXT = "pli_login_next"  # the page asked for before the login, until it completes

#: How long a passed first factor waits for the second one.
PENDING_SECONDS = 300
#: Sensitive actions (changing factors, exporting keys) need an authentication this recent.
REAUTH_SECONDS = 300
#: last_seen_at is written at most this often (one write per minute, not per request).
_SEEN_RESOLUTION = dt.timedelta(seconds=60)


def client_address(request: HttpRequest) -> str | None:
    """The client's address, for the login throttles and the audit trail.

    The socket peer, unless that peer is one of ``PLI_TRUSTED_PROXIES``: then
    the address the proxy itself appended to ``X-Forwarded-For`` (the last
    one; ``docs/operations/reverse-proxy.md`` sets it to ``$remote_addr``).
    Behind nginx every request comes from the proxy: counted on its address,
    twenty failures by anybody would lock everybody out. An address from
    anyone else, or anything that is not an address, is not believed.
    """
    peer = str(request.META.get("REMOTE_ADDR") or "") or None
    forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR") or "")
    if not peer or not forwarded:
        return peer
    from pli.server.accounts.certificate_login import is_trusted_proxy  # noqa: PLC0415

    if not is_trusted_proxy(peer):
        return peer
    candidate = forwarded.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer


#: Longer "next" values are not pages of Pli's (its longest query strings are well under).
_NEXT_MAX_LENGTH = 2000


def local_url(request: HttpRequest, target: str | None) -> str | None:
    """*target* if it is a page of this site (a path), else None: never an open redirect.

    Only a path is accepted: ``//evil.example`` (scheme-relative), ``/\\evil.example``
    (which browsers read alike), an absolute URL even to this host, and control
    characters are all refused.
    """
    if not target or len(target) > _NEXT_MAX_LENGTH or not target.startswith("/"):
        return None
    if target.startswith(("//", "/\\")) or not target.isprintable():
        return None
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return None
    return target


def remember_next_page(request: HttpRequest, target: str | None) -> None:
    """Keep the page asked for through the login's steps (each may be another request)."""
    wanted = local_url(request, target)
    if wanted is None:
        request.session.pop(LOGIN_NEXT, None)  # nothing stale from an earlier attempt
    else:
        request.session[LOGIN_NEXT] = wanted


def next_page_after_login(request: HttpRequest, user: User) -> str:
    """Where a completed login goes: the page asked for, else the user's home page.

    A professional logs in to read mail: the mailbox. The operator's staff have no
    mailbox of their own: the directory.
    """
    wanted = local_url(request, request.session.pop(LOGIN_NEXT, None))
    if wanted is not None:
        return wanted
    return reverse("webmail:folder" if user.role == Role.PROFESSIONAL else "directory-search")


def begin_second_factor(request: HttpRequest, user: User, method: str) -> None:
    request.session.cycle_key()
    request.session[PENDING] = {"user": user.pk, "at": int(time.time()), "method": method}


def pending_user(request: HttpRequest) -> tuple[User, str] | None:
    """The user who passed the first factor, if that was recent enough."""
    pending = request.session.get(PENDING)
    if not isinstance(pending, dict) or time.time() - pending.get("at", 0) > PENDING_SECONDS:
        return None
    user = User.objects.filter(pk=int(pending.get("user") or 0), is_active=True).first()
    return (user, str(pending.get("method", ""))) if user else None


@transaction.atomic
def complete_login(request: HttpRequest, user: User, method: str) -> UserSession:
    """Every factor is passed: open the session, register it, audit it."""
    request.session.pop(PENDING, None)
    request.session.pop(ENROLLING, None)
    login(request, user, backend=BACKEND)
    request.session[AUTH_AT] = int(time.time())
    request.session.save()  # the key exists from here on
    now = timezone.now()
    user.last_authenticated_at = now
    user.inactivity_warned_at = None
    user.save(update_fields=["last_authenticated_at", "inactivity_warned_at", "last_login"])
    throttle.clear(throttle.account_key(user.username))
    session_key = request.session.session_key or ""
    record = UserSession.objects.create(
        user=user,
        key_hash=session_key_hash(session_key),
        method=method,
        created_at=now,
        last_seen_at=now,
        source_address=client_address(request),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:255],
    )
    do_record_event(
        "auth.login",
        actor=user,
        request=request,
        target=f"session:{record.pk}",
        detail={"method": method},
    )
    return record


def mark_reauthenticated(request: HttpRequest) -> None:
    request.session[AUTH_AT] = int(time.time())


def recently_authenticated(request: HttpRequest) -> bool:
    return time.time() - float(request.session.get(AUTH_AT, 0)) <= REAUTH_SECONDS


def idle_timeout() -> dt.timedelta:
    return dt.timedelta(minutes=settings.PLI_SESSION_IDLE_MINUTES)


def absolute_timeout() -> dt.timedelta:
    return dt.timedelta(hours=settings.PLI_SESSION_MAX_HOURS)


def current_record(request: HttpRequest) -> UserSession | None:
    key = request.session.session_key
    if not key:
        return None
    return UserSession.objects.filter(key_hash=session_key_hash(key)).first()


#: Set on the request by :class:`SessionGuardMiddleware`: whether the user still has to
#: acknowledge the current charter, read in the same query as the session's record.
CHARTER_DUE = "pli_charter_due"


def _record_and_charter(request: HttpRequest) -> UserSession | None:
    """The session's record, and whether the charter is due, in one query (one round trip).

    Every authenticated request checks both (this guard, then
    :class:`~pli.server.accounts.middleware.EnrolmentGateMiddleware`): asked
    together, fresh at each request, they cost one round trip instead of
    three. Nothing is cached: a revocation, a timeout or a new charter
    version applies to the very next request, as before.
    """
    key = request.session.session_key
    if not key:
        return None
    user = request.user
    current = Charter.objects.order_by("-version").values("pk")[:1]
    due = Exists(Charter.objects.all()) & ~Exists(
        CharterAcknowledgement.objects.filter(
            user_id=int(user.pk or 0), charter_id=Subquery(current)
        )
    )
    record = (
        UserSession.objects.filter(key_hash=session_key_hash(key))
        .annotate(charter_due=ExpressionWrapper(due, output_field=BooleanField()))
        .first()
    )
    if record is not None:
        vars(request)[CHARTER_DUE] = bool(record.charter_due)
    return record


@transaction.atomic
def do_revoke_session(user: User, session_id: int, request: HttpRequest | None) -> bool:
    """Revoke one of *user*'s sessions; False when it is not one of theirs (or is gone)."""
    record = (
        UserSession.objects.select_for_update()
        .filter(pk=session_id, user=user, revoked_at__isnull=True)
        .first()
    )
    if record is None:
        return False
    record.revoked_at = timezone.now()
    record.save(update_fields=["revoked_at"])
    # The Django session row is keyed by the raw key, which is not kept: the
    # guard middleware refuses the revoked record on its next request and flushes it.
    do_record_event(
        "accounts.session_revoked", actor=user, request=request, target=f"session:{record.pk}"
    )
    return True


def _to_login(request: HttpRequest, ended: str) -> HttpResponse:
    """The login page, saying why the session ended; after a timeout (idle, expired),
    then back to the page the person was on (a page asked for: GET).

    A form sent (POST) returns to nothing: its target may answer only a POST, and
    what it carried is not kept. The login accepts only a path of this site
    (:func:`local_url`). A revoked session, or one whose professional left the
    directory, is not resumed.
    """
    query = {"ended": ended}
    if ended in ("idle", "expired") and request.method in ("GET", "HEAD"):
        query["next"] = request.get_full_path()
    return HttpResponseRedirect(reverse("accounts:login") + "?" + urlencode(query))


class SessionGuardMiddleware:
    """Ends sessions that are revoked, idle or too old (runs after AuthenticationMiddleware)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            ended = self._check(request)
            if ended is not None:
                logout(request)
                if request.path.startswith("/api/"):
                    from django.http import JsonResponse  # noqa: PLC0415

                    return JsonResponse({"code": "session_ended", "detail": str(ended)}, status=401)
                return _to_login(request, ended)
        return self.get_response(request)

    def _check(self, request: HttpRequest) -> str | None:
        # Read with the session itself (session_auth.SessionStore), else asked now.
        loaded = loaded_record(request)
        record: UserSession | None
        if loaded is not None:
            record, vars(request)[CHARTER_DUE], left = loaded
        else:
            record = _record_and_charter(request)
            from pli.server.accounts.actions import in_directory  # noqa: PLC0415 - a cycle

            left = record is not None and not in_directory(record.user)
        if record is None or record.revoked_at is not None:
            return "revoked"
        if left:  # no session outlives its professional's departure from the directory
            return "inactive"
        now = timezone.now()
        if now - record.created_at > absolute_timeout():
            return "expired"
        if now - record.last_seen_at > idle_timeout():
            return "idle"
        if now - record.last_seen_at > _SEEN_RESOLUTION:
            UserSession.objects.filter(pk=record.pk).update(last_seen_at=now)
        return None

"""A signed-in request's session, registry record, user and charter state in one query.

Every authenticated request needs four facts, each fresh (REQ-AUTH-STRONG and
the session rules of ``sessions.py``): the Django session's data, the user,
the session's registry record (revoked? idle? too old?) and whether the
current charter is acknowledged (REQ-INFO-PRO). Django asks for the first two
in two queries and the guard for the other two in a third: three round trips
and three ORM compilations on every API call, a third of the cost of a send
(issue 5's ingest benchmark).

:class:`SessionStore` reads them together when it loads the session, with one
SQL statement joined on the session key (and its hash, the registry's key).
Nothing is cached across requests: a revocation, a password change, a
deactivation or a new charter applies to the very next request, as before.

* :class:`SessionStore` keeps the record (with ``charter_due``) and its user
  beside the session data it loaded;
* :class:`AuthenticationMiddleware` lets Django's own ``get_user`` run, with
  its session-hash verification, while :class:`SessionUserBackend` hands it
  that user instead of reading the row again (same primary key, only during
  this request's ``get_user`` call);
* :class:`~pli.server.accounts.sessions.SessionGuardMiddleware` takes the
  record from the store rather than asking again.

A session without a record (a login in progress) loads as Django loads it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.middleware import (
    AuthenticationMiddleware as DjangoAuthenticationMiddleware,
)
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.contrib.sessions.models import Session
from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import Field, Model
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from pli.server.accounts.models import Charter, CharterAcknowledgement, User, UserSession
from pli.server.accounts.tokens import session_key_hash
from pli.server.directory.models import Professional

#: The backend's dotted path, as Django stores it in a session at login.
BACKEND = "pli.server.accounts.session_auth.SessionUserBackend"

#: The user that the session store read for the request whose ``get_user`` is running.
_LOADED_USER: contextvars.ContextVar[User | None] = contextvars.ContextVar(
    "pli_loaded_user", default=None
)

_Converter = Callable[[Any, Any, Any], Any]


def _fields(model: type[Model]) -> list[Field[Any, Any]]:
    return list(model._meta.concrete_fields)


@cache
def _statement(vendor: str) -> str:
    """The joined SELECT, written from the models' metadata (one text per database kind)."""
    quote = connection.ops.quote_name

    def columns(alias: str, model: type[Model]) -> str:
        return ", ".join(f"{alias}.{quote(field.column)}" for field in _fields(model))

    session, record, user = (
        quote(Session._meta.db_table),
        quote(UserSession._meta.db_table),
        quote(User._meta.db_table),
    )
    charter, acknowledgement = (
        quote(Charter._meta.db_table),
        quote(CharterAcknowledgement._meta.db_table),
    )
    # The charter rule of accounts.actions.needs_charter: due when a charter exists and
    # its latest version is not acknowledged by this user.
    # Names from the models' metadata; every value is a bound parameter.
    due = (
        f"(EXISTS (SELECT 1 FROM {charter})"  # noqa: S608 - our names
        f" AND NOT EXISTS (SELECT 1 FROM {acknowledgement} a"
        f" WHERE a.{quote('user_id')} = r.{quote('user_id')}"
        f" AND a.{quote('charter_id')} = (SELECT c.{quote('id')} FROM {charter} c"
        f" ORDER BY c.{quote('version')} DESC LIMIT 1)))"
    )
    # The rule of accounts.actions.in_directory: an account whose professional left the
    # directory is signed out at its next request (no session outlives the departure).
    professional = quote(Professional._meta.db_table)
    left = (
        f"(u.{quote('professional_id')} IS NOT NULL AND NOT EXISTS (SELECT 1"  # noqa: S608 - our names
        f" FROM {professional} p WHERE p.{quote('id')} = u.{quote('professional_id')}"
        f" AND p.{quote('active')}))"
    )
    return (
        f"SELECT s.{quote('session_data')}, r.{quote('id')}, {due}, {left},"  # noqa: S608 - our names
        f" {columns('r', UserSession)}, {columns('u', User)}"
        f" FROM {session} s"
        f" LEFT JOIN {record} r ON r.{quote('key_hash')} = %s"
        f" LEFT JOIN {user} u ON u.{quote('id')} = r.{quote('user_id')}"
        f" WHERE s.{quote('session_key')} = %s AND s.{quote('expire_date')} > %s"
    )


@cache
def _converters(vendor: str, model: type[Model]) -> list[tuple[int, Any, list[_Converter]]]:
    """What the ORM applies to the columns it reads (SQLite's datetimes, for one):
    ``(position, column, converters)`` for the columns that have any."""
    found = []
    for position, field in enumerate(_fields(model)):
        column = field.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if converters:
            found.append((position, column, converters))
    return found


@cache
def _attnames(model: type[Model]) -> list[str]:
    return [field.attname for field in _fields(model)]


def _instance(model: type[Model], values: Sequence[Any]) -> Any:
    converted = list(values)
    if len(converted) != len(_attnames(model)):
        raise ValueError(f"{model.__name__}: {len(converted)} columns read")
    # Every request reads two rows here: only the columns that need it are converted.
    for position, column, converters in _converters(connection.vendor, model):
        value = converted[position]
        for converter in converters:
            value = converter(value, column, connection)
        converted[position] = value
    return model.from_db(DEFAULT_DB_ALIAS, _attnames(model), converted)


class SessionStore(DbSessionStore):
    """Django's database sessions, loaded with their registry record and user."""

    #: The session's registry record (None when it has none), and whether the charter is due.
    record: UserSession | None = None
    charter_due = False
    #: Whether the user's professional is no longer in the directory.
    professional_left = False

    def load(self) -> dict[str, Any]:
        key = self.session_key
        if not key:
            return {}
        with connection.cursor() as cursor:
            cursor.execute(
                _statement(connection.vendor),
                [
                    session_key_hash(key),
                    key,
                    connection.ops.adapt_datetimefield_value(timezone.now()),
                ],
            )
            row = cursor.fetchone()
        if row is None:
            self._session_key = None  # missing or expired: a new key on save, as Django does
            return {}
        data, record_id, due, left = row[:4]
        self.record = None
        if record_id is not None:
            width = len(_fields(UserSession))
            record = _instance(UserSession, row[4 : 4 + width])
            self.charter_due = bool(due)
            self.professional_left = bool(left)
            user_values = row[4 + width :]
            if user_values[0] is not None:
                record.user = _instance(User, user_values)
            self.record = record
        decoded: dict[str, Any] = self.decode(data)
        return decoded

    def loaded_user(self) -> User | None:
        """The user read with the session (loading it if not yet), or None."""
        self._get_session()  # type: ignore[attr-defined]
        record = self.record
        if record is None or not UserSession.user.is_cached(record):
            return None
        return record.user


class SessionUserBackend(ModelBackend):
    """Django's model backend, given the user row its session store has just read."""

    def get_user(self, user_id: Any) -> User | None:
        loaded = _LOADED_USER.get()
        if loaded is not None and str(loaded.pk) == str(user_id):
            return loaded if self.user_can_authenticate(loaded) else None
        return super().get_user(user_id)


def _get_user(request: HttpRequest) -> Any:
    if not hasattr(request, "_cached_user"):
        session = request.session
        loaded = session.loaded_user() if isinstance(session, SessionStore) else None
        # Only for the length of this call: never seen by another request.
        token = _LOADED_USER.set(loaded)
        try:
            request._cached_user = auth.get_user(request)  # type: ignore[attr-defined]
        finally:
            _LOADED_USER.reset(token)
    return request._cached_user  # type: ignore[attr-defined]


def signed_in_user(request: HttpRequest) -> User:
    """The signed-in user of a view that requires one (its router's auth or
    ``login_required`` did): the object itself, not the lazy proxy on ``request.user``,
    through which every attribute read is a function call (a send reads dozens).
    """
    user = request.user
    if isinstance(user, SimpleLazyObject):  # as AuthenticationMiddleware leaves it
        user = _get_user(request)
    assert isinstance(user, User)  # noqa: S101 - the caller's authentication guarantees it
    return user


class AuthenticationMiddleware(DjangoAuthenticationMiddleware):
    """``request.user`` as Django computes it, from the row the session store read."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: _get_user(request))  # type: ignore[assignment]


def loaded_record(request: HttpRequest) -> tuple[UserSession, bool, bool] | None:
    """The registry record read with this request's session, if the store read one,
    whether the charter is due, and whether the user's professional left the directory."""
    session = getattr(request, "session", None)
    if not isinstance(session, SessionStore) or session.session_key is None:
        return None
    session._get_session()  # type: ignore[attr-defined]
    record = session.record
    # Read for the key the session was loaded with: still this request's key?
    if record is None or record.key_hash != session_key_hash(session.session_key):
        return None
    return record, session.charter_due, session.professional_left

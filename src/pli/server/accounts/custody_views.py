"""Pages of key custody: unlock the vault, set or change the unlock passphrase.

Users who log in with a passphrase unlock their vault at login (the login
passphrase seals it). Users who log in with a professional card or OpenID
Connect have no passphrase the server sees: they choose a separate *phrase de
déverrouillage* here, then enter it once per session. Thin: the work is in
:mod:`pli.server.accounts.custody`.
"""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.contrib.auth.hashers import check_password
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pli.server.accounts import throttle
from pli.server.accounts.custody import (
    CustodyError,
    check_unlock_passphrase,
    do_create_vault_key,
    do_rewrap_vault_key,
    has_vault_key,
    needs_unlock_passphrase,
    personal_mailbox,
    unlock_vault,
    vault_unlocked,
)
from pli.server.accounts.models import Custody, User
from pli.server.accounts.session_auth import signed_in_user
from pli.server.accounts.sessions import client_address, local_url

_TEMPLATE = "accounts/custody/unlock.html"


class UnlockForm(forms.Form):
    passphrase = forms.CharField(
        label=gettext_lazy("Phrase de déverrouillage"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )


class NewUnlockPassphraseForm(forms.Form):
    passphrase = forms.CharField(
        label=gettext_lazy("Nouvelle phrase de déverrouillage (12 caractères au moins)"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "autofocus": True}),
    )
    confirmation = forms.CharField(
        label=gettext_lazy("Confirmez la phrase de déverrouillage"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if data.get("passphrase") != data.get("confirmation"):
            raise forms.ValidationError(_("Les deux phrases diffèrent."), code="mismatch")
        return data


class ChangeUnlockPassphraseForm(NewUnlockPassphraseForm):
    current = forms.CharField(
        label=gettext_lazy("Phrase de déverrouillage actuelle"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    field_order = ["current", "passphrase", "confirmation"]  # noqa: RUF012 - read by Django


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _next_url(request: HttpRequest) -> str:
    # The web mail sends here with ?next= (the page that needed the key); else the mailbox.
    return local_url(request, request.GET.get("next")) or reverse("webmail:folder")


def _keys(request: HttpRequest, user: User) -> tuple[str, str]:
    return throttle.account_key(user.username), throttle.address_key(client_address(request))


def _failed(request: HttpRequest, user: User) -> dict[str, str]:
    """Count a wrong passphrase like a failed login: the vault is guessed at the same rate."""
    throttle.record_failure_audited(request, user, *_keys(request, user))
    return _error("bad_passphrase", _("Cette phrase n'ouvre pas votre clé."))


def _locked_out() -> dict[str, str]:
    return _error("locked", _("Trop d'essais. Réessayez plus tard."))


@login_required
def vault_unlock_view(request: HttpRequest) -> HttpResponse:
    """Enter the passphrase that opens the vault (or choose it, the first time)."""
    user = signed_in_user(request)
    if user.custody != Custody.VAULT or personal_mailbox(user) is None:
        return render(request, _TEMPLATE, {"mode": "none"})
    choosing = not has_vault_key(user) and needs_unlock_passphrase(user)
    form: forms.Form = (NewUnlockPassphraseForm if choosing else UnlockForm)(request.POST or None)
    if not needs_unlock_passphrase(user):
        form.fields["passphrase"].label = _("Phrase secrète de connexion")
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        passphrase = form.cleaned_data["passphrase"]
        response = HttpResponseRedirect(_next_url(request))
        if throttle.locked(*_keys(request, user)):
            error = _locked_out()
        else:
            try:
                error = _unlock(request, response, user, passphrase, choosing=choosing)
            except CustodyError as failure:
                error = _error(failure.code, failure.message)
        if error is None:
            return response
    # Already unlocked: the page says so and offers the way back, not a form to fill
    # again (one state at a time; the key locks itself at logout or session end).
    unlocked = request.method == "GET" and not choosing and vault_unlocked(request)
    return render(
        request,
        _TEMPLATE,
        {
            "mode": "unlocked" if unlocked else "choose" if choosing else "enter",
            "form": form,
            "error": error,
            "back": _next_url(request),
            "separate": needs_unlock_passphrase(user),
        },
        status=400 if error or (request.method == "POST" and not form.is_valid()) else 200,
    )


def _unlock(
    request: HttpRequest, response: HttpResponse, user: User, passphrase: str, *, choosing: bool
) -> dict[str, str] | None:
    if choosing:
        check_unlock_passphrase(user, passphrase)
        do_create_vault_key(user, passphrase, request)
    elif not has_vault_key(user):
        # A passphrase user whose key was never made (an enrolment cut short): the
        # login passphrase seals it, once proved.
        if not check_password(passphrase, user.password):
            return _failed(request, user)
        do_create_vault_key(user, passphrase, request)
    if not unlock_vault(request, response, user, passphrase, via="unlock_page"):
        return _failed(request, user)
    throttle.clear(throttle.account_key(user.username))
    return None


@login_required
def unlock_passphrase_view(request: HttpRequest) -> HttpResponse:
    """Change the separate unlock passphrase (certificate and OpenID Connect users)."""
    user = signed_in_user(request)
    if (
        user.custody != Custody.VAULT
        or not needs_unlock_passphrase(user)
        or not has_vault_key(user)
    ):
        return render(
            request,
            "accounts/custody/passphrase.html",
            {"form": None, "separate": needs_unlock_passphrase(user)},
        )
    form = ChangeUnlockPassphraseForm(request.POST or None)
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        response = HttpResponseRedirect(reverse("accounts:vault-unlock"))
        if throttle.locked(*_keys(request, user)):
            error = _locked_out()
        else:
            try:
                check_unlock_passphrase(user, form.cleaned_data["passphrase"])
                do_rewrap_vault_key(
                    user,
                    form.cleaned_data["current"],
                    form.cleaned_data["passphrase"],
                    request=request,
                    response=response,
                )
            except CustodyError as failure:
                error = (
                    _failed(request, user)
                    if failure.code == "wrong_passphrase"
                    else _error(failure.code, failure.message)
                )
        if error is None:
            return response
    return render(
        request,
        "accounts/custody/passphrase.html",
        {"form": form, "error": error, "separate": True},
        status=400 if error or (request.method == "POST" and not form.is_valid()) else 200,
    )

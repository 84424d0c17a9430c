"""Forms of the account pages (labels in French, translated to English)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _


class LoginForm(forms.Form):
    username = forms.CharField(
        label=_("Adresse de messagerie"),
        max_length=254,
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    passphrase = forms.CharField(
        label=_("Phrase secrète"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class CodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code à 6 chiffres de votre application d'authentification"),
        max_length=12,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


class RecoveryForm(forms.Form):
    code = forms.CharField(
        label=_("Code de secours"),
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autofocus": True}),
    )


class RequestAccessForm(forms.Form):
    address = forms.CharField(
        label=_("Votre adresse de messagerie inscrite à l'annuaire"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )


class ActivationForm(forms.Form):
    address = forms.CharField(
        label=_("Adresse de messagerie"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    code = forms.CharField(
        label=_("Code d'activation reçu par message"),
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class PassphraseForm(forms.Form):
    passphrase = forms.CharField(
        label=_("Nouvelle phrase secrète (12 caractères au moins)"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "autofocus": True}),
    )
    confirmation = forms.CharField(
        label=_("Confirmez la phrase secrète"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if data.get("passphrase") != data.get("confirmation"):
            raise forms.ValidationError(_("Les deux phrases secrètes diffèrent."), code="mismatch")
        return data


class ReauthForm(forms.Form):
    passphrase = forms.CharField(
        label=_("Phrase secrète"),
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )


class CharterForm(forms.Form):
    version = forms.IntegerField(widget=forms.HiddenInput)
    accept = forms.BooleanField(
        label=_("J'ai pris connaissance de la charte et je m'engage à la respecter."),
        required=True,
    )


class InviteForm(forms.Form):
    address = forms.CharField(label=_("Adresse de messagerie"), max_length=254)

"""The compose form: what a sender types. Checks of form only; the policy is in sending.py."""

from __future__ import annotations

import unicodedata
from typing import Any

from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pli.server.webmail.correspondents import split_addresses

SUBJECT_MAX = 200
BODY_MAX = 200_000
RECIPIENTS_MAX = 4000


def _no_control_characters(value: str) -> str:
    """Header text: no line break nor control or bidi-override character (RFC 5322 §2.2)."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise forms.ValidationError(
            _("Ce champ contient des caractères non admis (retour à la ligne, contrôle)."),
            code="control_characters",
        )
    return value


class ComposeForm(forms.Form):
    sender = forms.ChoiceField(label=gettext_lazy("De"))
    recipients = forms.CharField(
        label=gettext_lazy("À"),
        max_length=RECIPIENTS_MAX,
        required=False,
        help_text=gettext_lazy("Adresses de messagerie sécurisée, séparées par des virgules."),
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "inputmode": "email"}
        ),
    )
    subject = forms.CharField(
        label=gettext_lazy("Objet"),
        max_length=SUBJECT_MAX,
        help_text=gettext_lazy(
            "Jamais le nom ni le numéro de sécurité sociale du patient : "
            "l'objet doit rester pseudonymisé."
        ),
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    patient_id = forms.CharField(
        label=gettext_lazy("NIR / INS ou NISS du patient"),
        max_length=64,
        required=False,
        help_text=gettext_lazy(
            "Facultatif. Vérifié dans le registre des oppositions ; transmis chiffré, "
            "jamais conservé en clair."
        ),
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    patient_last_name = forms.CharField(
        label=gettext_lazy("Nom du patient"),
        max_length=128,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    patient_first_name = forms.CharField(
        label=gettext_lazy("Prénom du patient"),
        max_length=128,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    body = forms.CharField(
        label=gettext_lazy("Message"),
        max_length=BODY_MAX,
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 14}),
    )
    subject_reviewed = forms.BooleanField(
        label=gettext_lazy("J'ai relu l'objet : il n'identifie pas le patient."),
        required=False,
    )
    patient_consent = forms.BooleanField(
        label=gettext_lazy("Le patient a donné son accord à ce transfert."),
        required=False,
    )

    def __init__(self, *args: Any, senders: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sender = self.fields["sender"]
        assert isinstance(sender, forms.ChoiceField)  # noqa: S101 - declared above
        sender.choices = [(address, address) for address in senders]

    def clean_subject(self) -> str:
        return _no_control_characters(str(self.cleaned_data["subject"]))

    def clean_patient_last_name(self) -> str:
        return _no_control_characters(str(self.cleaned_data["patient_last_name"]))

    def clean_patient_first_name(self) -> str:
        return _no_control_characters(str(self.cleaned_data["patient_first_name"]))

    def clean_body(self) -> str:
        body = str(self.cleaned_data["body"]).replace("\r\n", "\n")
        if "\x00" in body:
            raise forms.ValidationError(_("Le message contient un caractère nul."), code="nul")
        return body

    def recipient_list(self) -> list[str]:
        return split_addresses(str(self.cleaned_data.get("recipients") or ""))

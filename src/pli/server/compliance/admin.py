"""The opposition register in the admin console (REQ-OPPOSITION).

Only the operator's administrators and its DPO see it (role-based, whatever
Django permissions say). The list shows the first hex digits of the patient
key, the dates and the roles: never an identifier, which the server does not
hold. Rows change only through the actions, which audit themselves:

- "Ajouter" is a form that takes the patient's NIR/INS or NISS, hashes it and
  calls :func:`~pli.server.compliance.actions.do_record_opposition`;
- "Lever une opposition" (a button of the list) takes the identifier again
  and calls :func:`~pli.server.compliance.actions.do_lift_opposition`. Asking
  for it, rather than a tick in the list, makes the officer show they hold
  the patient's request.

Nothing is edited or deleted here: the register keeps its history.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from pli.server.accounts.models import Role, User
from pli.server.compliance.access import may_manage_oppositions
from pli.server.compliance.actions import (
    MAX_PATIENT_ID_LENGTH,
    declared_kind,
    do_lift_opposition,
    do_record_opposition,
    parse_patient_id,
)
from pli.server.compliance.errors import ComplianceError
from pli.server.compliance.models import LiftReason, Opposition, OppositionReason, PatientIdKind

_ROLE_LABELS = dict(Role.choices)


def _patient_id_field() -> forms.CharField:
    return forms.CharField(
        label=_("NIR/INS ou NISS du patient"),
        max_length=MAX_PATIENT_ID_LENGTH,
        help_text=_("Il n'est pas conservé : seule son empreinte (HMAC) l'est."),
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


def _clean_patient_id(value: str) -> str:
    try:
        parse_patient_id(value)
    except ComplianceError as failure:
        raise forms.ValidationError(failure.message, code=failure.code) from None
    return value


class OppositionRecordForm(forms.Form):
    patient_id = _patient_id_field()
    declared_kind = forms.ChoiceField(
        label=_("déclaré comme"),
        choices=[("", _("déduit du numéro")), *PatientIdKind.choices],
        required=False,
    )
    reason = forms.ChoiceField(label=_("motif"), choices=OppositionReason.choices)

    def clean_patient_id(self) -> str:
        return _clean_patient_id(self.cleaned_data["patient_id"])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        patient_id = cleaned.get("patient_id")
        if patient_id:
            try:
                declared_kind(parse_patient_id(patient_id), cleaned.get("declared_kind") or None)
            except ComplianceError:
                self.add_error("declared_kind", _("Ce type ne correspond pas au numéro donné."))
        return cleaned


class OppositionLiftForm(forms.Form):
    patient_id = _patient_id_field()
    reason = forms.ChoiceField(label=_("motif de la levée"), choices=LiftReason.choices)

    def clean_patient_id(self) -> str:
        return _clean_patient_id(self.cleaned_data["patient_id"])


class ActiveFilter(admin.SimpleListFilter):
    title = _("en vigueur")
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("en vigueur")), ("no", _("levée"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "yes":
            return queryset.filter(lifted_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(lifted_at__isnull=False)
        return queryset


_SHOWN = (
    "key",
    "kind",
    "reason",
    "recorded_at",
    "recorded_by_role_label",
    "lifted_at",
    "lifted_by_role_label",
    "lift_reason",
)


@admin.register(Opposition)
class OppositionAdmin(admin.ModelAdmin[Opposition]):
    list_display = _SHOWN
    list_filter = (ActiveFilter, "kind", "reason", "lift_reason")
    date_hierarchy = "recorded_at"
    fields = _SHOWN
    readonly_fields = _SHOWN
    change_list_template = "admin/compliance/opposition/change_list.html"

    # ------------------------------------------------------------------ who

    def _officer(self, request: HttpRequest) -> bool:
        return may_manage_oppositions(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._officer(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._officer(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._officer(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # ------------------------------------------------------------------ what is shown

    @admin.display(description=_("clé du patient (début)"), ordering="patient_key")
    def key(self, opposition: Opposition) -> str:
        return str(opposition)

    @admin.display(description=_("rôle de l'auteur"))
    def recorded_by_role_label(self, opposition: Opposition) -> str:
        return str(_ROLE_LABELS.get(opposition.recorded_by_role, opposition.recorded_by_role))

    @admin.display(description=_("rôle de qui l'a levée"))
    def lifted_by_role_label(self, opposition: Opposition) -> str:
        return str(_ROLE_LABELS.get(opposition.lifted_by_role, opposition.lifted_by_role))

    # ------------------------------------------------------------------ recording, lifting

    def get_urls(self) -> list[URLPattern]:
        lift = path(
            "lift/",
            self.admin_site.admin_view(self.lift_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_lift",
        )
        # Before the default ones, whose "<path:object_id>/" would take "lift/".
        return [lift, *super().get_urls()]

    def _officer_or_denied(self, request: HttpRequest) -> User:
        user = request.user
        if not self._officer(request) or not isinstance(user, User):
            raise PermissionDenied
        return user

    def _form_page(self, request: HttpRequest, form: forms.Form, title: str) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "form": form,
            "title": title,
        }
        return TemplateResponse(request, "admin/compliance/opposition/form.html", context)

    def _changelist(self) -> HttpResponse:
        return redirect(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")

    def add_view(
        self,
        request: HttpRequest,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Record: the action writes the row and its audit event (no model form here)."""
        user = self._officer_or_denied(request)
        form = OppositionRecordForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                opposition, created = do_record_opposition(
                    user,
                    data["patient_id"],
                    request,
                    reason=data["reason"],
                    kind=data["declared_kind"] or None,
                )
            except ComplianceError as failure:
                form.add_error("patient_id", failure.message)
            else:
                if created:
                    text = gettext("L'opposition %(key)s est enregistrée.")
                else:
                    text = gettext(
                        "Une opposition (%(key)s) était déjà en vigueur pour ce patient."
                    )
                messages.success(request, text % {"key": str(opposition)})
                return self._changelist()
        return self._form_page(request, form, gettext("Enregistrer l'opposition d'un patient"))

    def lift_view(self, request: HttpRequest) -> HttpResponse:
        user = self._officer_or_denied(request)
        form = OppositionLiftForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                opposition = do_lift_opposition(
                    user,
                    form.cleaned_data["patient_id"],
                    request,
                    reason=form.cleaned_data["reason"],
                )
            except ComplianceError as failure:
                form.add_error("patient_id", failure.message)
            else:
                messages.success(
                    request,
                    gettext("L'opposition %(key)s est levée.") % {"key": str(opposition)},
                )
                return self._changelist()
        return self._form_page(request, form, gettext("Lever l'opposition d'un patient"))

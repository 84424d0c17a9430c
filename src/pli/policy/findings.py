"""What a pre-send check reports: a stable code, a severity and a few parameters.

A finding never repeats what it found: no identifier, no name, no address in
its parameters, only codes, counts and the span (``start``, ``end``) of the
offending text, so that a finding may be logged, shown, or sent to the server
without carrying patient data itself (REQ-SUBJECT, CONVENTIONS habit 4).

Translation. This package is pure (no Django, hence no Django gettext). Each
finding carries its French and English text (:attr:`Finding.message_fr`,
:attr:`Finding.message_en`) for the workstation client and the ``pli``
command line; the server translates ``code`` + ``params`` with its own
gettext catalogue (``pli.server.compliance.findings.finding_message``), whose
French strings are these ones (a test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Finding", "FindingCode", "Severity", "refuses"]


class Severity(StrEnum):
    #: The message must not leave as it is.
    REFUSE = "refuse"
    #: The sender should look again; sending stays possible.
    WARN = "warn"


class FindingCode(StrEnum):
    """Stable codes: part of the API and of the client's output, never renamed."""

    SUBJECT_CONTAINS_PATIENT_ID = "subject_contains_patient_id"
    SUBJECT_MAY_CONTAIN_PATIENT_ID = "subject_may_contain_patient_id"
    SUBJECT_CONTAINS_PATIENT_NAME = "subject_contains_patient_name"
    NO_RECIPIENT = "no_recipient"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    DUPLICATE_RECIPIENTS = "duplicate_recipients"


#: How a kind of patient identifier is named to people (params["kind"] holds the code).
KIND_LABELS = {"nir": "NIR/INS", "niss": "NISS"}

#: (French, English) templates, formatted with ``str.format`` over the params (and ``kind_label``).
_TEXTS: dict[FindingCode, tuple[str, str]] = {
    FindingCode.SUBJECT_CONTAINS_PATIENT_ID: (
        (
            "L'objet contient un numéro d'identification de patient ({kind_label}) : "
            "retirez-le, l'objet doit rester pseudonymisé."
        ),
        (
            "The subject contains a patient identification number ({kind_label}): "
            "remove it, the subject must stay pseudonymised."
        ),
    ),
    FindingCode.SUBJECT_MAY_CONTAIN_PATIENT_ID: (
        (
            "L'objet contient un long numéro qui ressemble à un NIR/INS : "
            "vérifiez qu'il n'identifie pas le patient."
        ),
        (
            "The subject contains a long number that looks like a NIR/INS: "
            "check that it does not identify the patient."
        ),
    ),
    FindingCode.SUBJECT_CONTAINS_PATIENT_NAME: (
        (
            "L'objet contient le nom ou le prénom du patient : "
            "remplacez-le par une référence qui ne l'identifie pas."
        ),
        (
            "The subject contains the patient's last or first name: "
            "replace it with a reference that does not identify them."
        ),
    ),
    FindingCode.NO_RECIPIENT: (
        "Indiquez au moins un destinataire.",
        "Give at least one recipient.",
    ),
    FindingCode.TOO_MANY_RECIPIENTS: (
        (
            "Trop de destinataires ({count}, au plus {limit}) : "
            "n'adressez le message qu'aux personnes qui en ont besoin."
        ),
        (
            "Too many recipients ({count}, at most {limit}): "
            "send the message only to the people who need it."
        ),
    ),
    FindingCode.DUPLICATE_RECIPIENTS: (
        (
            "Des adresses étaient en double ({count}) : chaque destinataire ne reçoit "
            "le message qu'une fois."
        ),
        "Some addresses were repeated ({count}): each recipient gets the message once.",
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding. ``params`` holds codes and counts only (see the module's docstring)."""

    code: FindingCode
    severity: Severity
    params: Mapping[str, str | int] = field(default_factory=dict, hash=False)

    def _format(self, template: str) -> str:
        kind = str(self.params.get("kind", ""))
        return template.format(kind_label=KIND_LABELS.get(kind, kind), **self.params)

    @property
    def message_fr(self) -> str:
        return self._format(_TEXTS[self.code][0])

    @property
    def message_en(self) -> str:
        return self._format(_TEXTS[self.code][1])

    def message(self, language: str = "fr") -> str:
        """French unless English is asked for (``"en"``, ``"en-gb"``…)."""
        return self.message_en if language.lower().startswith("en") else self.message_fr


def refuses(findings: Iterable[Finding]) -> bool:
    """Whether any finding forbids sending as is."""
    return any(finding.severity is Severity.REFUSE for finding in findings)

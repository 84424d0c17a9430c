"""The server's words for :mod:`pli.policy` findings, through gettext.

``pli.policy`` is pure and carries its own French and English texts for the
workstation client; the server translates the same ``code`` + ``params`` with
its catalogue (any language the operator adds). The French strings here are
the policy's, word for word (tests/test_compliance.py keeps them in step).
"""

from __future__ import annotations

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from pli.policy import KIND_LABELS, Finding, FindingCode

_TEMPLATES: dict[FindingCode, Promise] = {
    FindingCode.SUBJECT_CONTAINS_PATIENT_ID: _(
        "L'objet contient un numéro d'identification de patient (%(kind_label)s) : "
        "retirez-le, l'objet doit rester pseudonymisé."
    ),
    FindingCode.SUBJECT_MAY_CONTAIN_PATIENT_ID: _(
        "L'objet contient un long numéro qui ressemble à un NIR/INS : "
        "vérifiez qu'il n'identifie pas le patient."
    ),
    FindingCode.SUBJECT_CONTAINS_PATIENT_NAME: _(
        "L'objet contient le nom ou le prénom du patient : "
        "remplacez-le par une référence qui ne l'identifie pas."
    ),
    FindingCode.NO_RECIPIENT: _("Indiquez au moins un destinataire."),
    FindingCode.TOO_MANY_RECIPIENTS: _(
        "Trop de destinataires (%(count)s, au plus %(limit)s) : "
        "n'adressez le message qu'aux personnes qui en ont besoin."
    ),
    FindingCode.DUPLICATE_RECIPIENTS: _(
        "Des adresses étaient en double (%(count)s) : chaque destinataire ne reçoit "
        "le message qu'une fois."
    ),
}


def finding_message(finding: Finding) -> str:
    """The finding in the active language (French by default)."""
    params: dict[str, str | int] = dict(finding.params)
    kind = str(params.get("kind", ""))
    params["kind_label"] = KIND_LABELS.get(kind, kind)
    return str(_TEMPLATES[finding.code]) % params

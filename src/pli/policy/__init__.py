"""Pre-send checks (REQ-SUBJECT, REQ-FEW-RECIPIENTS): pure functions returning findings.

No I/O and no Django: the workstation client runs these before sealing (the
server never sees the subject, which travels inside the envelope), and the
server runs the ones it can (recipients) on what it receives. Each check
returns a list of :class:`Finding` (a stable ``code``, a ``severity``,
``params`` of codes and counts only); an empty list means nothing to say.
:func:`refuses` tells whether any finding forbids sending.

Opposition (REQ-OPPOSITION) is not here: whether a patient opposed is held
by the server (``pli.server.compliance``), which answers ``patient_opposed``.
"""

from pli.policy.findings import KIND_LABELS, Finding, FindingCode, Severity, refuses
from pli.policy.recipients import check_recipients, fold_recipients
from pli.policy.subject import check_subject, fold_name

__all__ = [
    "KIND_LABELS",
    "Finding",
    "FindingCode",
    "Severity",
    "check_recipients",
    "check_subject",
    "fold_name",
    "fold_recipients",
    "refuses",
]

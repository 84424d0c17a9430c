"""Who may use the opposition register (REQ-OPPOSITION, REQ-ADMIN-LIMITS).

Recording, lifting and consulting oppositions is the data controller's work:
the operator's administrators and its data protection officer. Professionals
never consult the register: the send path asks it about one patient at a time
(:func:`pli.server.compliance.actions.check_not_opposed`) and answers only
``patient_opposed``. Support staff have no part in it.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.utils.translation import gettext as _

from pli.server.accounts.models import Role, User
from pli.server.compliance.errors import ComplianceError

#: The roles that manage the register.
OPPOSITION_ROLES = frozenset({Role.OPERATOR_ADMIN, Role.DPO})


def may_manage_oppositions(user: User | AnonymousUser | None) -> bool:
    return (
        isinstance(user, User)
        and user.is_active
        and user.is_authenticated
        and user.role in OPPOSITION_ROLES
    )


def not_allowed() -> ComplianceError:
    return ComplianceError(
        "not_allowed",
        _(
            "Seuls les administrateurs de l'opérateur et le délégué à la protection "
            "des données gèrent les oppositions."
        ),
    )

"""REQ-FEW-RECIPIENTS: recipients are not multiplied needlessly.

Addresses are compared trimmed and lower-case, as the directory stores them
(``pli.server.directory.actions.normalise_address``): ``Dr.Martin@X`` and
``dr.martin@x`` are one recipient, who gets the message once. The limit counts
distinct recipients; repeats are folded and reported as a warning only.
Whether an address is valid or in the directory is the server's business
(``recipient_not_in_directory``), not this pure check's.
"""

from __future__ import annotations

from collections.abc import Iterable

from pli.policy.findings import Finding, FindingCode, Severity

__all__ = ["check_recipients", "fold_recipients"]


def _fold(address: str) -> str:
    return address.strip().lower()


def fold_recipients(recipients: Iterable[str]) -> list[str]:
    """Distinct recipients in the order given, trimmed and lower-case; blanks dropped."""
    if isinstance(recipients, str):
        raise TypeError("recipients is a collection of addresses, not one string")
    seen: set[str] = set()
    folded: list[str] = []
    for address in recipients:
        key = _fold(address)
        if key and key not in seen:
            seen.add(key)
            folded.append(key)
    return folded


def check_recipients(recipients: Iterable[str], limit: int) -> list[Finding]:
    """``no_recipient``, ``too_many_recipients`` (over ``limit`` distinct ones), and a
    ``duplicate_recipients`` warning when repeats were folded."""
    if isinstance(recipients, str):
        raise TypeError("recipients is a collection of addresses, not one string")
    if limit < 1:
        raise ValueError(f"the recipient limit must be at least 1, not {limit}")
    given = [address for address in recipients if _fold(address)]
    distinct = fold_recipients(given)
    findings: list[Finding] = []
    if len(given) > len(distinct):
        findings.append(
            Finding(
                FindingCode.DUPLICATE_RECIPIENTS,
                Severity.WARN,
                {"count": len(given) - len(distinct)},
            )
        )
    if not distinct:
        findings.append(Finding(FindingCode.NO_RECIPIENT, Severity.REFUSE))
    elif len(distinct) > limit:
        findings.append(
            Finding(
                FindingCode.TOO_MANY_RECIPIENTS,
                Severity.REFUSE,
                {"count": len(distinct), "limit": limit},
            )
        )
    return findings

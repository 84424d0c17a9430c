"""Errors of the audit trail: each has a stable ``code`` (CONVENTIONS, habit 5).

The CLI prints them as ``pli: error: <code>: <detail>``; the codes are part of
Pli's interface (scripts watch for them): never change one, add new ones.
"""

from __future__ import annotations

from typing import ClassVar


class AuditError(Exception):
    code: ClassVar[str] = "audit_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# --- recording: a caller's programming errors, refused before anything is written -------------
class UnknownAuditAction(AuditError):
    """The action code is not in :class:`~pli.server.audit.models.AuditAction` (a typo?)."""

    code = "audit_unknown_action"


class AuditValueRefused(AuditError):
    """A target, outcome or detail is not made of short codes and counts only."""

    code = "audit_value_refused"


# --- verification: the first broken link ---------------------------------------------------------
class AuditChainBroken(AuditError):
    """The trail does not verify; ``seq`` names the first event where it breaks."""

    code = "audit_chain_broken"

    def __init__(self, detail: str, *, seq: int | None = None) -> None:
        super().__init__(detail)
        self.seq = seq


class AuditHashMismatch(AuditChainBroken):
    """An event's content, or its link to its predecessor, does not match the hashes."""

    code = "audit_hash_mismatch"


class AuditMissingPredecessor(AuditChainBroken):
    """Events are missing before this one, and no kept checkpoint vouches for it."""

    code = "audit_missing_predecessor"


class AuditCheckpointInvalid(AuditChainBroken):
    """A checkpoint's signature is bad, by an unknown key, or names an absent event."""

    code = "audit_bad_checkpoint"


# --- configuration and commands ------------------------------------------------------------------
class AuditKeyUnavailable(AuditError):
    """The operator audit key cannot be read or created."""

    code = "audit_key_unavailable"


class AuditBadDate(AuditError):
    code = "audit_bad_date"


class AuditUnsigned(AuditChainBroken):
    """The trail has events and no signed checkpoint vouches for any of them.

    The first event always gets a checkpoint (decision 0005): a trail without
    any had its checkpoints deleted, and may have been rewritten whole, or
    its checkpoints could never be signed (the audit key unreadable: logged).
    """

    code = "audit_unsigned"

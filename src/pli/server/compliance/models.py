"""The opposition register (REQ-OPPOSITION): patients who refused exchanges about them.

The register never holds the patient's identifier: only ``patient_key``, an
HMAC-SHA256 of the normalised NIR/INS or NISS under a key derived from the
server secret (DESIGN "What the server sees"). Whoever knows the identifier
(the professional about to send, the DPO handling the patient's request) can
compute the key and look it up; whoever holds the database cannot read it
back, nor test guesses without the server secret.

No free text either: why an opposition was recorded or lifted is a code.
Lifting keeps the row (who lifted it, when, why) so that the register shows
its history; at most one opposition per patient is active at a time.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

#: How many hex digits of the key the console shows: enough to tell rows apart.
KEY_PREFIX_LENGTH = 12


class PatientIdKind(models.TextChoices):
    """What the identifier was declared as; the key does not depend on it (INS = NIR)."""

    NIR = "nir", _("NIR")
    INS = "ins", _("INS")
    NISS = "niss", _("NISS (Belgique)")


class OppositionReason(models.TextChoices):
    PATIENT_REQUEST = "patient_request", _("Demande du patient")
    REPRESENTATIVE_REQUEST = "representative_request", _("Demande de son représentant légal")


class LiftReason(models.TextChoices):
    PATIENT_WITHDREW = "patient_withdrew", _("Le patient a retiré son opposition")
    RECORDED_IN_ERROR = "recorded_in_error", _("Opposition enregistrée par erreur")


class Opposition(models.Model):
    #: HMAC-SHA256 (hex) of the normalised identifier (pli.server.compliance.actions.patient_key).
    patient_key = models.CharField(_("clé du patient"), max_length=64, editable=False)
    kind = models.CharField(_("type d'identifiant"), max_length=8, choices=PatientIdKind.choices)
    reason = models.CharField(_("motif"), max_length=32, choices=OppositionReason.choices)
    recorded_at = models.DateTimeField(_("enregistrée le"))
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("enregistrée par"),
    )
    #: The role when it was recorded, kept when the account is gone (REQ-INACTIVE-DELETE).
    recorded_by_role = models.CharField(_("rôle de l'auteur"), max_length=20, blank=True)
    lifted_at = models.DateTimeField(_("levée le"), null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("levée par"),
    )
    lifted_by_role = models.CharField(_("rôle de qui l'a levée"), max_length=20, blank=True)
    lift_reason = models.CharField(
        _("motif de la levée"), max_length=32, choices=LiftReason.choices, blank=True
    )

    class Meta:
        verbose_name = _("opposition")
        verbose_name_plural = _("oppositions")
        ordering = ["-recorded_at"]
        constraints = [
            # One active opposition per patient; its partial index also serves is_opposed().
            models.UniqueConstraint(
                fields=["patient_key"],
                condition=models.Q(lifted_at__isnull=True),
                name="one_active_opposition_per_patient",
            ),
            # A lifted opposition says why; an active one has no such reason.
            models.CheckConstraint(
                condition=(
                    models.Q(lifted_at__isnull=True, lift_reason="")
                    | (models.Q(lifted_at__isnull=False) & ~models.Q(lift_reason=""))
                ),
                name="lift_reason_iff_lifted",
            ),
        ]

    def __str__(self) -> str:
        # Shown in the console and copied into admin log entries: the key prefix only.
        return f"{self.key_prefix}…"

    @property
    def key_prefix(self) -> str:
        return self.patient_key[:KEY_PREFIX_LENGTH]

    @property
    def active(self) -> bool:
        return self.lifted_at is None

"""The directory: who may send and receive (REQ-DIRECTORY, REQ-DIRECTORY-NATIONAL).

Professionals come from the national RPPS/ADELI extraction, Belgian NIHII,
or a local directory (psychologists, social workers: REQ-NON-HEALTH);
organisations from FINESS/SIRET; mailboxes from the MSSanté correspondence
extraction or are created locally. Data is limited to what REQ-DATA-PRO lists.
"""

from __future__ import annotations

import unicodedata

from django.db import models
from django.utils.translation import gettext_lazy as _


def _last_import() -> models.ForeignKey[ImportRun | None, ImportRun | None]:
    """The run that last listed a row: "seen by this import" (REQ-DIRECTORY).

    Written on every row by every import, read only once at the end of an
    import (a whole-table pass that marks inactive what was not listed): no
    index, and no database constraint, whose deferred check cost a lookup per
    written row (PostgreSQL). Django still sets it to NULL when a run is deleted.
    """
    return models.ForeignKey(
        "ImportRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )


def search_key(*parts: str) -> str:
    """Lower case, no accents, single spaces: what searches compare."""
    text = " ".join(p for p in parts if p)
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().replace("-", " ").replace("'", " ").split())


class IdentifierType(models.TextChoices):
    RPPS = "8", _("RPPS")
    ADELI = "0", _("ADELI")
    NIHII = "N", _("INAMI / NIHII")
    LOCAL = "L", _("Identifiant local")


class Organisation(models.Model):
    """A site (FINESS géographique) or a structure known by its technical identifier."""

    technical_id = models.CharField(_("identifiant technique"), max_length=64)
    finess_site = models.CharField(_("FINESS site"), max_length=9, blank=True)
    finess_legal = models.CharField(_("FINESS juridique"), max_length=9, blank=True)
    siret = models.CharField(_("SIRET"), max_length=14, blank=True)
    siren = models.CharField(_("SIREN"), max_length=9, blank=True)
    name = models.CharField(_("raison sociale"), max_length=255, blank=True)
    trade_name = models.CharField(_("enseigne commerciale"), max_length=255, blank=True)
    address_complement = models.CharField(_("complément"), max_length=255, blank=True)
    street_number = models.CharField(_("numéro"), max_length=16, blank=True)
    street_repetition = models.CharField(_("indice de répétition"), max_length=16, blank=True)
    street_type = models.CharField(_("type de voie"), max_length=64, blank=True)
    street_name = models.CharField(_("voie"), max_length=255, blank=True)
    distribution = models.CharField(_("mention de distribution"), max_length=255, blank=True)
    cedex = models.CharField(_("bureau cedex"), max_length=64, blank=True)
    postcode = models.CharField(_("code postal"), max_length=16, blank=True)
    city_code = models.CharField(_("code commune"), max_length=16, blank=True)
    city = models.CharField(_("commune"), max_length=128, blank=True)
    city_key = models.CharField(max_length=128, blank=True, editable=False)
    country_code = models.CharField(_("code pays"), max_length=8, blank=True)
    country = models.CharField(_("pays"), max_length=64, blank=True)
    phone = models.CharField(_("téléphone"), max_length=32, blank=True)
    email = models.CharField(_("e-mail"), max_length=255, blank=True)
    department_code = models.CharField(_("département"), max_length=8, blank=True)
    active = models.BooleanField(_("active"), default=True)
    last_import = _last_import()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("structure")
        verbose_name_plural = _("structures")
        # Explicit indexes rather than unique=True / db_index=True: on PostgreSQL
        # Django adds a varchar_pattern_ops twin to each, which only LIKE uses;
        # every index is paid on each row an import writes (REQ-DIRECTORY).
        constraints = [
            models.UniqueConstraint(
                fields=["technical_id"], name="directory_org_technical_id_uniq"
            ),
        ]
        indexes = [
            # The MSSanté import and FHIR find structures by FINESS or SIRET (equality).
            models.Index(fields=["finess_site"], name="directory_org_finess_site_idx"),
            models.Index(fields=["siret"], name="directory_org_siret_idx"),
            # The search's place filters are prefixes: LIKE 'x%' on PostgreSQL (pattern
            # operators; the option is PostgreSQL's only), byte ranges on SQLite.
            models.Index(
                fields=["postcode"],
                name="directory_org_postcode_idx",
                opclasses=["varchar_pattern_ops"],
            ),
            models.Index(
                fields=["city_key"],
                name="directory_org_city_key_idx",
                opclasses=["varchar_pattern_ops"],
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.trade_name or self.technical_id


class Professional(models.Model):
    identifier_type = models.CharField(
        _("type d'identifiant"), max_length=1, choices=IdentifierType.choices
    )
    identifier = models.CharField(_("identifiant"), max_length=32)
    #: The ANS national form (8 + RPPS, 0 + ADELI) or the typed local form: unique.
    national_id = models.CharField(_("identification nationale"), max_length=40)
    civil_title_code = models.CharField(_("code civilité d'exercice"), max_length=8, blank=True)
    civil_title = models.CharField(_("civilité d'exercice"), max_length=64, blank=True)
    civility_code = models.CharField(_("code civilité"), max_length=8, blank=True)
    civility = models.CharField(_("civilité"), max_length=64, blank=True)
    last_name = models.CharField(_("nom d'exercice"), max_length=128)
    first_name = models.CharField(_("prénom d'exercice"), max_length=128, blank=True)
    #: Indexed by migrations 0002 and 0003, in code point order (see queries.py).
    name_key = models.CharField(max_length=260, editable=False)
    #: Indexed with the name key by migration 0003 (profession, then name order).
    profession_code = models.CharField(_("code profession"), max_length=8, blank=True)
    profession = models.CharField(_("profession"), max_length=128, blank=True)
    category_code = models.CharField(_("code catégorie"), max_length=8, blank=True)
    category = models.CharField(_("catégorie professionnelle"), max_length=128, blank=True)
    active = models.BooleanField(_("actif"), default=True)
    last_import = _last_import()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("professionnel")
        verbose_name_plural = _("professionnels")
        constraints = [
            # Not unique=True: no varchar_pattern_ops twin on PostgreSQL (see Organisation).
            models.UniqueConstraint(fields=["national_id"], name="directory_pro_national_id_uniq"),
        ]
        indexes = [
            # Search by identifier (REQ-DIRECTORY-NATIONAL): RPPS, ADELI, NIHII or local.
            # The name-word indexes of the search are in migrations 0002 and 0003 (see
            # queries.py): they need collations and expressions written per database.
            models.Index(fields=["identifier"], name="directory_pro_identifier_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name} ({self.national_id})".strip()

    def save(self, *args: object, **kwargs: object) -> None:
        self.name_key = search_key(self.last_name, self.first_name)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Activity(models.Model):
    """A professional practising at a site: one line of the RPPS extraction."""

    # No database constraint on these two: an activity is written only by the
    # import, which finds both ids by a join in the same statement, or by the ORM,
    # which cascades deletions itself. PostgreSQL's deferred check cost two
    # lookups and a row lock per written line: a third of the import's time.
    professional = models.ForeignKey(
        Professional, on_delete=models.CASCADE, related_name="activities", db_constraint=False
    )
    organisation = models.ForeignKey(
        Organisation,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="activities",
        db_constraint=False,
    )
    #: Stable key of the line's activity fields: a re-import updates, never duplicates.
    activity_key = models.CharField(max_length=64)
    skill_type_code = models.CharField(_("code type savoir-faire"), max_length=8, blank=True)
    skill_type = models.CharField(_("type savoir-faire"), max_length=128, blank=True)
    skill_code = models.CharField(_("code savoir-faire"), max_length=16, blank=True)
    skill = models.CharField(_("savoir-faire"), max_length=255, blank=True)
    practice_mode_code = models.CharField(_("code mode d'exercice"), max_length=8, blank=True)
    practice_mode = models.CharField(_("mode d'exercice"), max_length=64, blank=True)
    sector_code = models.CharField(_("code secteur d'activité"), max_length=16, blank=True)
    sector = models.CharField(_("secteur d'activité"), max_length=255, blank=True)
    pharmacist_section_code = models.CharField(max_length=8, blank=True)
    pharmacist_section = models.CharField(max_length=128, blank=True)
    registration_authority = models.CharField(
        _("autorité d'enregistrement"), max_length=128, blank=True
    )
    active = models.BooleanField(default=True)
    last_import = _last_import()

    class Meta:
        verbose_name = _("activité")
        verbose_name_plural = _("activités")
        constraints = [
            # Not unique=True: no varchar_pattern_ops twin on PostgreSQL (see Organisation).
            models.UniqueConstraint(fields=["activity_key"], name="directory_act_key_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.professional_id} @ {self.organisation_id}"


class MailboxType(models.TextChoices):
    PERSONAL = "PER", _("Personnelle")
    ORGANISATIONAL = "ORG", _("Organisationnelle")
    APPLICATIVE = "APP", _("Applicative")
    PRACTICE = "CAB", _("Cabinet")


class Mailbox(models.Model):
    address = models.CharField(_("adresse"), max_length=254, unique=True)
    kind = models.CharField(_("type"), max_length=3, choices=MailboxType.choices)
    professional = models.ForeignKey(
        Professional, null=True, blank=True, on_delete=models.CASCADE, related_name="mailboxes"
    )
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.CASCADE, related_name="mailboxes"
    )
    service = models.CharField(_("service de rattachement"), max_length=255, blank=True)
    description = models.CharField(_("description"), max_length=255, blank=True)
    #: Liste rouge: never listed in searches, resolvable only by exact address.
    red_list = models.BooleanField(_("liste rouge"), default=False)
    active = models.BooleanField(_("active"), default=True)
    last_import = _last_import()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("boîte aux lettres")
        verbose_name_plural = _("boîtes aux lettres")

    def __str__(self) -> str:
        return self.address

    def clean(self) -> None:
        # Before Django's uniqueness check of a form (the admin): two spellings of one
        # address are one mailbox.
        self.address = self.address.strip().lower()

    def save(self, *args: object, **kwargs: object) -> None:
        # Addresses are stored as normalise_address gives them (trimmed, lower case:
        # MSSanté addresses are case-insensitive), so that every lookup is an exact
        # one on the unique index (migration 0005); the import writes them so too.
        self.address = self.address.strip().lower()
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class MailboxCertificate(models.Model):
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="certificates")
    pem = models.TextField()
    serial = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=64, unique=True)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("certificat de boîte")
        verbose_name_plural = _("certificats de boîte")

    def __str__(self) -> str:
        return f"{self.mailbox_id}:{self.serial}"


class ImportKind(models.TextChoices):
    RPPS = "rpps", _("Extraction RPPS (personne-activité)")
    MSSANTE = "mssante", _("Extraction des correspondances MSSanté")


class ImportRun(models.Model):
    """One import of an extraction: a read-only history in the admin."""

    kind = models.CharField(max_length=16, choices=ImportKind.choices)
    file_name = models.CharField(_("fichier"), max_length=255)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, default="running")
    lines = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    deactivated = models.PositiveIntegerField(default=0)
    rejects_file = models.CharField(_("fichier des rejets"), max_length=500, blank=True)
    error_code = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = _("import")
        verbose_name_plural = _("imports")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.file_name} ({self.status})"

"""Sample directory extractions in the real ANS formats, generated deterministically.

Two files, as the ANS publishes them ("Description des nouvelles extractions
en libre accès"):

- the RPPS *personne-activité* extraction
  ``PS_LibreAcces_Personne_activite_YYYYMMDDhhmm.txt``: UTF-8, ``|``-separated,
  no quoting, one header line of :data:`RPPS_COLUMNS`, a trailing ``|`` on
  every line (53 fields when split), one line per activity;
- the MSSanté mailbox correspondence extraction
  ``Extraction_Correspondance_MSSante_YYYYMMDDhhmm.txt``: the same syntax,
  31 columns (:data:`MSSANTE_COLUMNS`, read by position because the names of
  the last ones vary between releases).

Everything here is pure Python (no Django), so that the benchmark, the tests
and ``pli demo`` can write files without a configured server; the column
lists are also what :mod:`pli.server.directory.importing` checks headers
against, so the writer and the reader cannot drift apart.

The people are invented: valid RPPS / ADELI numbers (Luhn), French names with
accents, apostrophes and hyphens, structures with valid FINESS (Luhn, Corsica
2A/2B) and SIRET numbers. A run is a pure function of its arguments (seeded
:class:`random.Random`) and writes in constant memory, so it can produce the
2,000,000-line file of the benchmark. On request, bad lines are mixed in, each
with the reason code the importer must give (:class:`SampleLine`).
"""

from __future__ import annotations

import random
import unicodedata
import zipfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pli.identifiers import luhn_complete

__all__ = [
    "MSSANTE_BAD_KINDS",
    "MSSANTE_COLUMNS",
    "RPPS_BAD_KINDS",
    "RPPS_COLUMNS",
    "SampleLine",
    "mssante_file_name",
    "mssante_sample_lines",
    "rpps_file_name",
    "rpps_sample_lines",
    "write_mssante_extraction",
    "write_rpps_extraction",
    "zip_extraction",
]

# --------------------------------------------------------------------------- the formats

#: The 52 columns of the RPPS personne-activité extraction, in order (ANS).
RPPS_COLUMNS: tuple[str, ...] = (
    "Type d'identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Code civilité d'exercice",
    "Libellé civilité d'exercice",
    "Code civilité",
    "Libellé civilité",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Code profession",
    "Libellé profession",
    "Code catégorie professionnelle",
    "Libellé catégorie professionnelle",
    "Code type savoir-faire",
    "Libellé type savoir-faire",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Code mode exercice",
    "Libellé mode exercice",
    "Numéro SIRET site",
    "Numéro SIREN site",
    "Numéro FINESS site",
    "Numéro FINESS établissement juridique",
    "Identifiant technique de la structure",
    "Raison sociale site",
    "Enseigne commerciale site",
    "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)",
    "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)",
    "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)",
    "Bureau cedex (coord. structure)",
    "Code postal (coord. structure)",
    "Code commune (coord. structure)",
    "Libellé commune (coord. structure)",
    "Code pays (coord. structure)",
    "Libellé pays (coord. structure)",
    "Téléphone (coord. structure)",
    "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)",
    "Adresse e-mail (coord. structure)",
    "Code Département (structure)",
    "Libellé Département (structure)",
    "Ancien identifiant de la structure",
    "Autorité d'enregistrement",
    "Code secteur d'activité",
    "Libellé secteur d'activité",
    "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens",
)

#: The 31 columns of the MSSanté correspondence extraction. The importer reads
#: them by position: the names of the address columns vary between releases.
MSSANTE_COLUMNS: tuple[str, ...] = (
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "Complément localisation structure BAL",
    "Complément distribution structure BAL",
    "Numéro Voie structure BAL",
    "Complément Numéro Voie structure BAL",
    "Type Voie structure BAL",
    "Libellé Voie structure BAL",
    "Lieu-dit structure BAL",
    "Ligne Acheminement structure BAL",
    "Code postal structure BAL",
    "Département structure BAL",
    "Pays structure BAL",
)

#: Kinds of bad RPPS lines :func:`rpps_sample_lines` can mix in, cycled in this
#: order, with the reason code the importer gives (``finess_blanked``: the
#: line is kept without its invalid FINESS numbers).
RPPS_BAD_KINDS: tuple[str, ...] = (
    "wrong_field_count",
    "bad_check_digit",
    "unknown_identifier_type",
    "bad_encoding",
    "national_id_mismatch",
    "bad_identifier",
    "finess_blanked",
)

#: Kinds of bad MSSanté lines, cycled in this order.
MSSANTE_BAD_KINDS: tuple[str, ...] = (
    "wrong_field_count",
    "bad_check_digit",
    "unknown_professional",
    "unknown_identifier_type",
    "bad_encoding",
    "unknown_structure",
    "unknown_mailbox_type",
    "bad_address",
)

#: Reason codes of lines that are imported all the same (with a correction).
KEPT_REASONS = frozenset({"finess_blanked"})

DEFAULT_STAMP = "202611220000"


def rpps_file_name(stamp: str = DEFAULT_STAMP) -> str:
    """The ANS file name for an extraction made at ``stamp`` (``YYYYMMDDhhmm``)."""
    return f"PS_LibreAcces_Personne_activite_{stamp}.txt"


def mssante_file_name(stamp: str = DEFAULT_STAMP) -> str:
    return f"Extraction_Correspondance_MSSante_{stamp}.txt"


@dataclass(frozen=True, slots=True)
class SampleLine:
    """One data line as written (without its line ending) and what the importer must do."""

    data: bytes
    #: The reason code the importer reports for this line, ``None`` for a clean line.
    reason: str | None
    #: The national identifier (8 + RPPS, 0 + ADELI) the line is about, if any.
    national_id: str

    @property
    def imported(self) -> bool:
        return self.reason is None or self.reason in KEPT_REASONS


# --------------------------------------------------------------------------- reference data

_LAST_NAMES = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
    "Vincent", "Fournier", "Morel", "Girard", "André", "Mercier", "Dupont", "Lambert", "Bonnet",
    "François", "Martinez", "Legrand", "Garnier", "Faure", "Rousseau", "Blanc", "Guérin",
    "Muller", "Henry", "Roussel", "Nicolas", "Perrin", "Morin", "Mathieu", "Clément", "Gauthier",
    "Dumont", "Lopez", "Fontaine", "Chevalier", "Robin", "Masson", "Gérard", "Nguyen", "Boyer",
    "Lemaire", "Duval", "Joly", "Roche", "Noël", "Meyer", "Lucas", "Meunier", "Pérez", "Marchand",
    "Dufour", "Blanchard", "Barbier", "Brun", "Dumas", "Brunet", "Schmitt", "Leroux", "Colin",
    "Fernandez", "Renard", "Arnaud", "Rolland", "Caron", "Aubert", "Giraud", "Leclerc", "Vidal",
    "Bourgeois", "Renaud", "Lemoine", "Picard", "Gaillard", "Lacroix", "Fabre", "Dupuis",
    "Rivière", "Le Gall", "Le Bihan", "Ménard", "Fleury", "Deschamps", "Bénard", "Prévost",
    "Carré", "Rémy", "Hébert", "Lemaître", "Thébault", "Béranger", "Cœur", "D'Almeida",
    "N'Diaye", "Da Silva", "Saint-Martin", "Martin-Durand", "Lévêque", "Gaëtan", "Château",
)  # fmt: skip
_FIRST_NAMES_F = (
    "Marie", "Nathalie", "Isabelle", "Sylvie", "Catherine", "Françoise", "Hélène", "Léa",
    "Chloé", "Émilie", "Zoé", "Noémie", "Anaïs", "Maëlle", "Gaëlle", "Agnès", "Béatrice",
    "Céline", "Valérie", "Véronique", "Aurélie", "Mélanie", "Inès", "Éloïse", "Renée",
    "Marie-Hélène", "Anne-Sophie", "Clémence", "Thérèse", "Joëlle", "Camille", "Sarah",
)  # fmt: skip
_FIRST_NAMES_M = (
    "Jean", "Pierre", "Michel", "Philippe", "Loïc", "Jérôme", "Sébastien", "Stéphane",
    "Frédéric", "Cédric", "Benoît", "Joël", "Clément", "Théo", "Raphaël", "Jean-François",
    "Pierre-Yves", "Jérémy", "Timothée", "Maël", "Noël", "François", "Hervé", "Rémi", "Gaël",
    "Anthony", "Nicolas", "Karim", "Mathéo", "Éric", "André", "Léon",
)  # fmt: skip

# (postcode, INSEE commune code, commune, department code, department)
_CITIES = (
    ("75013", "75113", "Paris", "75", "Paris"),
    ("75015", "75115", "Paris", "75", "Paris"),
    ("75018", "75118", "Paris", "75", "Paris"),
    ("69003", "69383", "Lyon", "69", "Rhône"),
    ("13005", "13205", "Marseille", "13", "Bouches-du-Rhône"),
    ("31000", "31555", "Toulouse", "31", "Haute-Garonne"),
    ("06000", "06088", "Nice", "06", "Alpes-Maritimes"),
    ("44000", "44109", "Nantes", "44", "Loire-Atlantique"),
    ("67000", "67482", "Strasbourg", "67", "Bas-Rhin"),
    ("34000", "34172", "Montpellier", "34", "Hérault"),
    ("33000", "33063", "Bordeaux", "33", "Gironde"),
    ("59000", "59350", "Lille", "59", "Nord"),
    ("35000", "35238", "Rennes", "35", "Ille-et-Vilaine"),
    ("51100", "51454", "Reims", "51", "Marne"),
    ("42000", "42218", "Saint-Étienne", "42", "Loire"),
    ("38000", "38185", "Grenoble", "38", "Isère"),
    ("21000", "21231", "Dijon", "21", "Côte-d'Or"),
    ("49000", "49007", "Angers", "49", "Maine-et-Loire"),
    ("30000", "30189", "Nîmes", "30", "Gard"),
    ("63000", "63113", "Clermont-Ferrand", "63", "Puy-de-Dôme"),
    ("13100", "13001", "Aix-en-Provence", "13", "Bouches-du-Rhône"),
    ("29200", "29019", "Brest", "29", "Finistère"),
    ("37000", "37261", "Tours", "37", "Indre-et-Loire"),
    ("87000", "87085", "Limoges", "87", "Haute-Vienne"),
    ("74000", "74010", "Annecy", "74", "Haute-Savoie"),
    ("25000", "25056", "Besançon", "25", "Doubs"),
    ("57000", "57463", "Metz", "57", "Moselle"),
    ("76000", "76540", "Rouen", "76", "Seine-Maritime"),
    ("14000", "14118", "Caen", "14", "Calvados"),
    ("54000", "54395", "Nancy", "54", "Meurthe-et-Moselle"),
    ("94000", "94028", "Créteil", "94", "Val-de-Marne"),
    ("93200", "93066", "Saint-Denis", "93", "Seine-Saint-Denis"),
    ("91000", "91228", "Évry-Courcouronnes", "91", "Essonne"),
    ("20000", "2A004", "Ajaccio", "2A", "Corse-du-Sud"),
    ("20200", "2B033", "Bastia", "2B", "Haute-Corse"),
    ("97200", "97209", "Fort-de-France", "972", "Martinique"),
    ("97400", "97411", "Saint-Denis", "974", "La Réunion"),
    ("64100", "64102", "Bayonne", "64", "Pyrénées-Atlantiques"),
    ("73000", "73065", "Chambéry", "73", "Savoie"),
    ("56000", "56260", "Vannes", "56", "Morbihan"),
)
_STREET_TYPES = (
    ("R", "Rue"), ("R", "Rue"), ("R", "Rue"), ("AV", "Avenue"), ("BD", "Boulevard"),
    ("PL", "Place"), ("CHE", "Chemin"), ("ALL", "Allée"), ("IMP", "Impasse"), ("QUAI", "Quai"),
    ("RTE", "Route"), ("CRS", "Cours"),
)  # fmt: skip
_STREET_NAMES = (
    "de la République", "Victor Hugo", "Jean Jaurès", "du Général de Gaulle", "Pasteur",
    "des Écoles", "de l'Église", "Gambetta", "Voltaire", "du Maréchal Foch", "Émile Zola",
    "de la Paix", "des Lilas", "Saint-Exupéry", "Jules Ferry", "de la Gare", "du Château",
    "Paul Bert", "Aristide Briand", "Georges Clemenceau", "des Tilleuls", "Sainte-Thérèse",
)  # fmt: skip
_SAINTS = ("Sainte-Anne", "Saint-Joseph", "Sainte-Marie", "Saint-Louis", "Notre-Dame")

# Professions: code, label, identifier type (8 RPPS, 0 ADELI), registration authority, weight.
_PROFESSIONS = (
    ("10", "Médecin", "8", "CNOM", 30),
    ("60", "Infirmier", "8", "CNOI", 22),
    ("21", "Pharmacien", "8", "CNOP", 10),
    ("70", "Masseur-Kinésithérapeute", "8", "CNOMK", 9),
    ("40", "Chirurgien-Dentiste", "8", "CNOCD", 5),
    ("50", "Sage-Femme", "8", "CNOSF", 3),
    ("80", "Pédicure-Podologue", "8", "CNOPP", 2),
    ("93", "Psychologue", "0", "ARS", 7),
    ("91", "Orthophoniste", "0", "ARS", 3),
    ("92", "Orthoptiste", "0", "ARS", 1),
    ("96", "Ergothérapeute", "0", "ARS", 2),
    ("98", "Psychomotricien", "0", "ARS", 1),
    ("94", "Ostéopathe", "0", "ARS", 2),
    ("26", "Audioprothésiste", "0", "ARS", 1),
    ("28", "Opticien-Lunetier", "0", "ARS", 1),
    ("41", "Assistant de service social", "0", "ARS", 1),
)
_PROFESSION_POOL = tuple(p for p in _PROFESSIONS for _ in range(p[4]))
_MEDICAL_SKILLS = (
    ("SM54", "Médecine générale"), ("SM54", "Médecine générale"), ("SM54", "Médecine générale"),
    ("SM04", "Cardiologie et maladies vasculaires"), ("SM15", "Dermatologie et vénéréologie"),
    ("SM19", "Gynécologie-obstétrique"), ("SM40", "Pédiatrie"), ("SM42", "Psychiatrie"),
    ("SM44", "Radio-diagnostic"), ("SM02", "Anesthésie-réanimation"), ("SM38", "Ophtalmologie"),
    ("SM53", "Spécialiste en médecine générale"), ("SM26", "Médecine interne"),
)  # fmt: skip
_DENTAL_SKILLS = (("SCD01", "Orthopédie dento-faciale"), ("SCD02", "Chirurgie orale"))
_PHARMACY_SECTIONS = (
    ("A", "Pharmaciens titulaires d'officine"),
    ("D", "Pharmaciens adjoints et autres exercices"),
    ("G", "Pharmaciens biologistes"),
    ("H", "Pharmaciens des établissements de santé"),
)
_MODES = {"L": "Libéral", "S": "Salarié", "B": "Bénévole"}

# Structure kinds, by index modulo 20 (hospitals are the first 2 % of the pool):
# kind, sector code, sector label.
_KIND_BY_RESIDUE = (
    *(("cabinet", "SA07", "Cabinet individuel"),) * 8,
    *(("groupe", "SA08", "Cabinet de groupe"),) * 3,
    *(("pharmacie", "SA33", "Pharmacie d'officine"),) * 3,
    ("laboratoire", "SA25", "Laboratoire de biologie médicale"),
    ("msp", "SA52", "Maison de santé pluriprofessionnelle"),
    ("msp", "SA52", "Maison de santé pluriprofessionnelle"),
    ("ehpad", "SA17", "Etablissement d'hébergement pour personnes âgées dépendantes"),
    ("centre", "SA05", "Centre de santé"),
    ("clinique", "SA02", "Etablissement privé de santé"),
)
_HOSPITAL = ("hopital", "SA01", "Etablissement public de santé")
_PHARMACY_RESIDUES = (11, 12, 13)
_HOSPITAL_SHARE = 50  # 1 structure in 50 is a hospital (at most 1,500 of them)


def _finess(department: str, number: int) -> str:
    # FINESS: 2-character department, 6 digits, Luhn (Corsica 2A/2B computed as 21/22).
    department = department[:2]
    stem = f"{department}{number % 1_000_000:06d}"
    numeric = {"2A": "21", "2B": "22"}.get(department, department) + stem[2:]
    return stem + luhn_complete(numeric)[-1]


def _siret(number: int) -> tuple[str, str]:
    siren = luhn_complete(f"{(number * 7_919 + 31_337) % 100_000_000:08d}")
    return luhn_complete(f"{siren}0001"), siren


def _ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.replace("œ", "oe").replace("Œ", "OE"))
    plain = "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in " -'"))
    return "-".join(plain.lower().replace("'", " ").split())


@dataclass(frozen=True, slots=True)
class _Structure:
    """Columns 20 to 47 of an RPPS line (SIRET ... Ancien identifiant), plus the sector."""

    kind: str
    columns: tuple[str, ...]
    sector_code: str
    sector: str

    @property
    def technical_id(self) -> str:
        return self.columns[4]

    @property
    def finess_site(self) -> str:
        return self.columns[2]

    @property
    def siret(self) -> str:
        return self.columns[0]

    @property
    def name(self) -> str:
        return self.columns[5]

    @property
    def city(self) -> str:
        return self.columns[18]


@lru_cache(maxsize=1 << 13)
def _structure(seed: int, index: int, hospitals: int) -> _Structure:
    """Structure ``index`` of a pool: a pure function, so nothing is kept but a bounded cache.

    The first ``hospitals`` structures are hospitals, where many people work.
    """
    rng = random.Random(seed * 1_000_003 + index)  # noqa: S311 - invented sample data
    rnd = rng.random
    if index < hospitals:
        kind, sector_code, sector = _HOSPITAL
    else:
        kind, sector_code, sector = _KIND_BY_RESIDUE[index % 20]
    postcode, city_code, city, department, department_label = _CITIES[int(rnd() * len(_CITIES))]
    siret, siren = _siret(seed * 10_000_019 + index)
    finess_site = finess_legal = ""
    if kind in ("hopital", "clinique", "pharmacie", "laboratoire", "ehpad", "centre"):
        # Unique per department while the pool has fewer than 10^6 structures.
        finess_site = _finess(department, index)
        finess_legal = _finess(department, index + 500_000)
    owner = _LAST_NAMES[int(rnd() * len(_LAST_NAMES))]
    street_name = _STREET_NAMES[int(rnd() * len(_STREET_NAMES))]
    trade_name = ""
    if kind == "hopital":
        name = f"Centre hospitalier de {city}" if rnd() < 0.7 else f"CHU de {city}"
    elif kind == "clinique":
        name = f"Clinique {_SAINTS[int(rnd() * len(_SAINTS))]}"
    elif kind == "pharmacie":
        name = f"SELARL Pharmacie {owner.upper()}"
        trade_name = f"Pharmacie {street_name.removeprefix('de la ').removeprefix('du ')}"
    elif kind == "laboratoire":
        name = f"Laboratoire de biologie médicale {owner.upper()}"
    elif kind == "ehpad":
        name = f"EHPAD {('Les Tilleuls', 'Le Clos Fleuri', 'Les Glycines')[index % 3]}"
    elif kind == "msp":
        name = f"Maison de santé pluriprofessionnelle {street_name.removeprefix('des ')}"
    elif kind == "centre":
        name = f"Centre de santé {city}"
    elif kind == "groupe":
        name = f"SCM du cabinet médical {street_name}"
    else:
        name = f"Cabinet du Dr {owner.upper()}"
    if finess_site:
        technical_id = "F" + finess_site
        old_id = "1" + finess_site
    else:
        technical_id = f"R{(seed * 7 + index) % 10**14:014d}"
        old_id = "3" + siret
    repetition = "B" if rnd() < 0.05 else ""
    street_code, street_type = _STREET_TYPES[int(rnd() * len(_STREET_TYPES))]
    phone = f"0{1 + int(rnd() * 5)}{int(rnd() * 10**8):08d}"
    email = f"contact@{_ascii_slug(name)[:40]}.test" if rnd() < 0.2 else ""  # RFC 2606
    cedex = f"{city.upper()} CEDEX" if kind == "hopital" else ""
    columns = (
        siret,
        siren,
        finess_site,
        finess_legal,
        technical_id,
        name,
        trade_name,
        "Service des consultations" if kind == "hopital" else "",
        "Bâtiment A" if rnd() < 0.1 else "",
        str(1 + int(rnd() * 180)),
        repetition,
        street_code,
        street_type,
        street_name,
        "BP 12" if rnd() < 0.03 else "",
        cedex,
        postcode,
        city_code,
        city,
        "99000",
        "France",
        phone,
        "",
        f"0{1 + int(rnd() * 5)}{int(rnd() * 10**8):08d}" if rnd() < 0.3 else "",
        email,
        department,
        department_label,
        old_id,
    )
    return _Structure(kind, columns, sector_code, sector)


# --------------------------------------------------------------------------- RPPS lines


def _person_identifier(id_type: str, number: int) -> str:
    # A bijection of the person number (7_919 is prime to 10^8): unique, scattered.
    scrambled = (number * 7_919 + 12_345) % 100_000_000
    if id_type == "8":
        return luhn_complete(f"10{scrambled:08d}")
    return luhn_complete(f"{scrambled:08d}")


def _corrupt_rpps(kind: str, fields: list[str], rng: random.Random) -> bytes:
    """Turn a clean line (its 52 fields) into one the importer reports as ``kind``."""
    id_type, identifier = fields[0], fields[1]
    if kind == "wrong_field_count":
        return "|".join(fields[:-3]).encode() + b"|"
    if kind == "bad_check_digit":
        wrong = identifier[:-1] + str((int(identifier[-1]) + 1 + rng.randrange(9)) % 10)
        fields[1], fields[2] = wrong, id_type + wrong
    elif kind == "unknown_identifier_type":
        fields[0], fields[2] = "5", "5" + identifier
    elif kind == "bad_encoding":
        # A name written in Latin-1 by a broken export: not UTF-8.
        before = "|".join(fields[:7]).encode() + b"|"
        after = b"|" + "|".join(fields[8:]).encode() + b"|"
        return before + "LEFÈVRE".encode("latin-1") + after
    elif kind == "national_id_mismatch":
        other = _person_identifier(id_type, 99_999_999 - rng.randrange(1000))
        fields[2] = id_type + other
    elif kind == "bad_identifier":
        fields[1], fields[2] = identifier[:-1], id_type + identifier[:-1]
    elif kind == "finess_blanked":
        # A structure of its own, so that the invalid number does not race the
        # valid one of a structure that other lines share.
        finess = fields[21] or _finess("75", rng.randrange(10**6))
        fields[21] = finess[:-1] + str((int(finess[-1]) + 1) % 10)
        fields[23] = "F" + fields[21]
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    return "|".join(fields).encode() + b"|"


@dataclass(frozen=True)
class _Pool:
    """The structures people of a sample work in."""

    seed: int
    size: int
    hospitals: int
    window: int


def _draw_person(prnd: Callable[[], float], number: int) -> tuple[list[str], str]:
    """Columns 1 to 13 of person ``number``, and the registration authority."""
    profession_code, profession, id_type, authority, _weight = _PROFESSION_POOL[
        int(prnd() * len(_PROFESSION_POOL))
    ]
    identifier = _person_identifier(id_type, number)
    female = prnd() < 0.55
    first_names = _FIRST_NAMES_F if female else _FIRST_NAMES_M
    first_name = first_names[int(prnd() * len(first_names))]
    last_name = _LAST_NAMES[int(prnd() * len(_LAST_NAMES))].upper()
    doctor = profession_code in ("10", "40")
    title_code, title = ("DR", "Docteur") if doctor and prnd() < 0.9 else ("", "")
    if profession_code == "10" and prnd() < 0.03:
        title_code, title = "PR", "Professeur"
    civility_code, civility = ("MME", "Madame") if female else ("M", "Monsieur")
    person = [
        id_type, identifier, id_type + identifier, title_code, title, civility_code, civility,
        last_name, first_name, profession_code, profession, "C", "Civil",
    ]  # fmt: skip
    return person, authority


def _draw_activity(
    prnd: Callable[[], float], profession_code: str, centre: int, pool: _Pool, used: set[int]
) -> list[str] | None:
    """Columns 14 to 52 of one activity, but the authority; ``None`` for a structure seen.

    The same count of numbers is drawn in every case, so that what follows
    does not depend on which structures exist.
    """
    without, hospital, where, residue, salaried, skill_draw, dental, section_draw = (
        prnd() for _ in range(8)
    )
    structure: _Structure | None = None
    if not used and without < 0.03:
        used.add(-1)  # an activity without a known structure: no organisation
    else:
        if hospital < 0.3 and profession_code != "21":
            index = int(where * pool.hospitals)
        else:
            index = pool.hospitals + (centre + int(where * pool.window)) % (
                pool.size - pool.hospitals
            )
            if profession_code == "21":
                index += _PHARMACY_RESIDUES[int(residue * 3)] - index % 20
        if index in used:
            return None
        used.add(index)
        structure = _structure(pool.seed, index, pool.hospitals)
    skill_type_code = skill_type = skill_code = skill = ""
    if profession_code == "10":
        skill_type_code, skill_type = "S", "Spécialité ordinale"
        skill_code, skill = _MEDICAL_SKILLS[int(skill_draw * len(_MEDICAL_SKILLS))]
    elif profession_code == "40" and dental < 0.2:
        skill_type_code, skill_type = "S", "Spécialité ordinale"
        skill_code, skill = _DENTAL_SKILLS[int(skill_draw * len(_DENTAL_SKILLS))]
    section_code = section = ""
    if profession_code == "21":
        section_code, section = _PHARMACY_SECTIONS[int(section_draw * len(_PHARMACY_SECTIONS))]
    if structure is None:
        return [skill_type_code, skill_type, skill_code, skill, "L", _MODES["L"],
                *("",) * 28, "", "", section_code, section]  # fmt: skip
    employed = structure.kind in ("hopital", "clinique", "ehpad", "centre")
    mode = "S" if employed or salaried >= 0.9 else "L"
    return [
        skill_type_code, skill_type, skill_code, skill, mode, _MODES[mode], *structure.columns,
        structure.sector_code, structure.sector, section_code, section,
    ]  # fmt: skip


def rpps_sample_lines(
    *,
    persons: int | None = None,
    lines: int | None = None,
    seed: int = 0,
    bad_every: int = 0,
    skip_persons: Collection[int] = (),
    structures: int | None = None,
) -> Iterator[SampleLine]:
    """The data lines of a sample RPPS extraction (no header), one per activity.

    Give ``persons`` (each on 1 to 3 lines) or ``lines`` (an exact count; the
    number of people follows). ``bad_every=N`` replaces every Nth line by a
    bad one, cycling through :data:`RPPS_BAD_KINDS`.

    A newer extraction of the same directory: the same ``seed`` and
    ``structures``, more ``persons`` (newcomers come last) and
    ``skip_persons`` (person numbers that left). The people the two files
    share are then identical, line for line.
    """
    if (persons is None) == (lines is None):
        raise ValueError("give persons or lines")
    expected_persons = persons if persons is not None else max(1, (lines or 0) * 2 // 3)
    size = max(20, structures or expected_persons // 2)
    pool = _Pool(
        seed=seed,
        size=size,
        hospitals=max(1, min(size // _HOSPITAL_SHARE, 1500)),
        window=min(size, 1000),
    )
    prnd = random.Random(seed).random  # noqa: S311 - invented sample data
    corruption = random.Random(seed + 1)  # noqa: S311 - kept apart: people do not depend on it
    skipped = frozenset(skip_persons)
    written = bad_count = number = 0
    while persons is None or number < persons:
        person, authority = _draw_person(prnd, number)
        used: set[int] = set()
        drawn = [
            # Near a point that moves through the pool as the file goes on (colleagues
            # of a town are listed close together): each structure is then generated
            # about once, and the bounded cache of _structure serves the rest.
            _draw_activity(prnd, person[9], number // 2, pool, used)
            for _ in range(1 + (prnd() < 0.3) + (prnd() < 0.27))
        ]
        number += 1
        if number - 1 in skipped:
            continue  # drawn all the same, so that the people after are unchanged
        for activity in drawn:
            if activity is None:
                continue
            fields = [*person, *activity[:-4], authority, *activity[-4:]]
            written += 1
            reason: str | None = None
            if bad_every and written % bad_every == 0:
                reason = RPPS_BAD_KINDS[bad_count % len(RPPS_BAD_KINDS)]
                bad_count += 1
                data = _corrupt_rpps(reason, fields, corruption)
            else:
                data = "|".join(fields).encode() + b"|"
            yield SampleLine(data, reason, person[2])
            if lines is not None and written >= lines:
                return


def _target(path: Path, name: str) -> Path:
    return path / name if path.is_dir() else path


def _write(target: Path, header: Sequence[str], sample: Iterator[SampleLine]) -> Path:
    with target.open("wb", buffering=1 << 20) as out:
        out.write("|".join(header).encode() + b"|\n")
        for line in sample:
            out.write(line.data)
            out.write(b"\n")
    return target


def write_rpps_extraction(
    path: Path,
    *,
    persons: int | None = None,
    lines: int | None = None,
    seed: int = 0,
    bad_every: int = 0,
    skip_persons: Collection[int] = (),
    structures: int | None = None,
    stamp: str = DEFAULT_STAMP,
) -> Path:
    """Write a sample RPPS extraction (streaming) and return its path.

    ``path`` is the file, or a directory to write the ANS-named file in. The
    other arguments are those of :func:`rpps_sample_lines`.
    """
    target = _target(Path(path), rpps_file_name(stamp))
    sample = rpps_sample_lines(
        persons=persons,
        lines=lines,
        seed=seed,
        bad_every=bad_every,
        skip_persons=skip_persons,
        structures=structures,
    )
    return _write(target, RPPS_COLUMNS, sample)


# --------------------------------------------------------------------------- MSSanté lines

# Invented people get addresses under the reserved ".test" top-level domain
# (RFC 2606, RFC 6761), never one that looks like a real operator's: a sample
# must not send mail anywhere, nor be taken for a real directory.
_DOMAIN = "mssante.test"
_OPERATOR_DOMAINS = (f"medecin.{_DOMAIN}", f"pro.{_DOMAIN}", f"ordre.{_DOMAIN}")
_PROFESSION_DOMAINS = {
    "21": f"pharmacien.{_DOMAIN}",
    "60": f"infirmier.{_DOMAIN}",
    "70": f"kine.{_DOMAIN}",
    "50": f"sagefemme.{_DOMAIN}",
    "40": f"chirurgien-dentiste.{_DOMAIN}",
}
_SERVICES = ("Cardiologie", "Urgences", "Pédiatrie", "Radiologie", "Médecine interne", "Accueil")


def _mssante_fields(
    kind: str,
    address: str,
    person: Sequence[str] | None,
    structure: tuple[str, str, Sequence[str]] | None,
    service: str,
) -> list[str]:
    """The 31 columns of a mailbox line, from an RPPS line's fields."""
    fields = [""] * 31
    fields[0], fields[1], fields[7] = kind, address, service
    if person is not None:
        fields[2:5] = person[0], person[1], person[2]
        fields[8:11] = person[4], person[7], person[8]
        fields[11:17] = person[11], person[12], person[9], person[10], person[15], person[16]
        fields[17] = "O"
    if structure is not None:
        structure_type, identification, row = structure
        fields[5], fields[6] = structure_type, identification
        fields[18], fields[19] = row[24], row[25]
        fields[20], fields[21] = row[26], row[33]
        fields[22], fields[23] = row[28], row[29]
        fields[24], fields[25] = row[31], row[32]
        fields[27] = f"{row[35]} {row[37].upper()}".strip()
        fields[28], fields[29], fields[30] = row[35], row[44], row[39]
    return fields


def _structure_reference(row: Sequence[str]) -> tuple[str, str, Sequence[str]] | None:
    # The national structure identifier (IDNST): 1 + FINESS, 3 + SIRET (ANS).
    if row[21]:
        return "1", "1" + row[21], row
    if row[19]:
        return "3", "3" + row[19], row
    return None


def _corrupt_mssante(kind: str, fields: list[str], rng: random.Random) -> bytes:
    if kind == "wrong_field_count":
        return "|".join(fields[:20]).encode() + b"|"
    if kind == "bad_check_digit":
        identifier = fields[3] or luhn_complete("1099999999")
        wrong = identifier[:-1] + str((int(identifier[-1]) + 1 + rng.randrange(9)) % 10)
        fields[2], fields[3], fields[4] = fields[2] or "8", wrong, (fields[2] or "8") + wrong
    elif kind == "unknown_professional":
        stranger = luhn_complete(f"19{rng.randrange(10**8):08d}")  # never generated above
        fields[2], fields[3], fields[4] = "8", stranger, "8" + stranger
    elif kind == "unknown_identifier_type":
        fields[2], fields[4] = "7", "7" + fields[3]
    elif kind == "bad_encoding":
        before = "|".join(fields[:9]).encode() + b"|"
        after = b"|" + "|".join(fields[10:]).encode() + b"|"
        return before + "HÉBERT".encode("latin-1") + after
    elif kind == "unknown_structure":
        fields[2] = fields[3] = fields[4] = ""
        fields[0], fields[5] = "ORG", "1"
        fields[6] = "1" + _finess("99", rng.randrange(10**6))  # no such structure imported
    elif kind == "unknown_mailbox_type":
        fields[0] = "XYZ"
    elif kind == "bad_address":
        fields[1] = fields[1].replace("@", " at ")
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    return "|".join(fields).encode() + b"|"


def mssante_sample_lines(
    rpps_path: Path, *, seed: int = 0, bad_every: int = 0, share: float = 0.6
) -> Iterator[SampleLine]:
    """Mailbox lines for the people and structures of an RPPS extraction.

    About ``share`` of the people get a personal (PER) mailbox, and one
    structure in three an organisational (ORG) one. Reads ``rpps_path`` as a
    stream, but keeps the addresses and structures already given in memory
    (sets), which is fine for the sample sizes this serves.
    """
    rng = random.Random(seed + 17)  # noqa: S311 - invented sample data
    rnd = rng.random
    addresses: set[str] = set()
    structures: set[str] = set()
    previous = ""
    count = bad_count = 0

    def unique(local: str, domain: str) -> str:
        candidate, n = f"{local}@{domain}", 1
        while candidate in addresses:
            n += 1
            candidate = f"{local}{n}@{domain}"
        addresses.add(candidate)
        return candidate

    def emit(fields: list[str], national_id: str) -> SampleLine:
        nonlocal count, bad_count
        count += 1
        if bad_every and count % bad_every == 0:
            reason = MSSANTE_BAD_KINDS[bad_count % len(MSSANTE_BAD_KINDS)]
            bad_count += 1
            return SampleLine(_corrupt_mssante(reason, fields, rng), reason, national_id)
        return SampleLine("|".join(fields).encode() + b"|", None, national_id)

    with Path(rpps_path).open("rb") as source:
        next(source)  # the header
        for raw in source:
            try:
                row = raw.rstrip(b"\r\n").decode("utf-8").split("|")
            except UnicodeDecodeError:
                continue
            if len(row) != 53 or row[0] not in ("0", "8"):
                continue
            reference = _structure_reference(row)
            if row[2] != previous:
                previous = row[2]
                if rnd() < share:
                    local = f"{_ascii_slug(row[8])}.{_ascii_slug(row[7])}"
                    domain = (
                        f"{_ascii_slug(row[24])[:30]}.{_DOMAIN}"
                        if reference is not None and row[48] == "SA01"
                        else _PROFESSION_DOMAINS.get(
                            row[9], _OPERATOR_DOMAINS[int(rnd() * len(_OPERATOR_DOMAINS))]
                        )
                    )
                    service = _SERVICES[int(rnd() * len(_SERVICES))] if row[48] == "SA01" else ""
                    fields = _mssante_fields("PER", unique(local, domain), row, reference, service)
                    yield emit(fields, row[2])
            if reference is not None and row[23] not in structures:
                structures.add(row[23])
                if rnd() < 0.34:
                    slug = _ascii_slug(row[25] or row[24])[:30]
                    local = "secretariat" if rnd() < 0.5 else "accueil"
                    fields = _mssante_fields(
                        "ORG", unique(local, f"{slug}.{_DOMAIN}"), None, reference, ""
                    )
                    yield emit(fields, "")


def write_mssante_extraction(
    path: Path,
    rpps_path: Path,
    *,
    seed: int = 0,
    bad_every: int = 0,
    share: float = 0.6,
    stamp: str = DEFAULT_STAMP,
) -> Path:
    """Write a sample MSSanté correspondence extraction for the people of ``rpps_path``."""
    target = _target(Path(path), mssante_file_name(stamp))
    sample = mssante_sample_lines(rpps_path, seed=seed, bad_every=bad_every, share=share)
    return _write(target, MSSANTE_COLUMNS, sample)


def zip_extraction(txt_path: Path, zip_path: Path | None = None) -> Path:
    """The extraction inside a zip, as the ANS distributes it (written as a stream)."""
    txt_path = Path(txt_path)
    target = zip_path or txt_path.with_suffix(".zip")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(txt_path, arcname=txt_path.name)
    return target

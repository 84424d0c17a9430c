"""Searching the directory (REQ-DIRECTORY, REQ-DIRECTORY-NATIONAL).

Only directory members may send or receive, so senders look their
correspondents up here: by name (every word typed is the prefix of some word
of the name, in any order, ignoring case and accents), by identifier (RPPS,
ADELI, NIHII, the ANS national form, or a local one), by profession and by
place. Red-listed mailboxes are never listed (liste rouge); an authenticated
member may still resolve one by its exact address.

How a search stays fast on the whole national directory (about 800,000
people, 2,000,000 activities): ``name_key`` holds the name in search form
("martin claire"). The rarest word of the query, judged on the indexes, picks
the candidates: the ``name_key`` index when it starts the name, the expression
indexes of migration 0002 when it starts the second to fourth word (each
indexes the key from that word on), an index on the number of spaces for the
rare names of five words or more. The other words filter those candidates. A
narrow place, profession or identifier is read from its own index instead. No
query reads more than a bounded number of candidates, except a walk of the
name index in name order when the matches are many and spread over the
alphabet, which meets a page of them soon (see :func:`_page_ids`). Counting
stops at :data:`COUNT_CAP`. Results are in code point order of the name key,
then id: the same rows in the same order on SQLite and PostgreSQL.

Measured through the API on 1,274,315 generated people (2,000,000 activities,
benchmarks/README.md): p50 about 20 ms, p95 under 40 ms on both databases
when the machine is not loaded. Slow still: a name together with a broad
place ("martin" in "75013"), each candidate's place checked: 0.3 s on PostgreSQL
with 130,000 people (not one of the benchmark's kinds).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    CharField,
    Exists,
    F,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Collate
from django.db.models.lookups import GreaterThanOrEqual, LessThan
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from pli.identifiers import IdentifierError, parse_adeli, parse_national_id, parse_nihii, parse_rpps
from pli.server.directory.models import (
    Activity,
    IdentifierType,
    Mailbox,
    Organisation,
    Professional,
    search_key,
)
from pli.server.validation import whole_number

__all__ = [
    "COUNT_CAP",
    "MAX_QUERY_LENGTH",
    "MailboxSummary",
    "OrganisationSummary",
    "ProfessionalResult",
    "SearchError",
    "SearchPage",
    "identifier_type_name",
    "parse_page",
    "profession_choices",
    "resolve_address",
    "search_directory",
]

#: Counting stops here: "1000+" is all a person needs, and counting a common
#: prefix over the whole country would be slow.
COUNT_CAP = 1000
#: Reading the people an identifier, a profession or a place selects stops here: if
#: they are more, they are spread over the alphabet and read in name order.
FETCH_CAP = 2000
#: Reading the structures of a place stops here: if they are more, their
#: activities are by the thousand (3.6 a structure in the national file).
SITE_CAP = 500
#: Counting index entries to choose the leading word of a search stops here.
ESTIMATE_CAP = 5000
#: Up to this many matches of a word's later-word branches are sorted by the
#: database rather than met by walking the names in order.
SORT_CAP = 20_000
#: Longest accepted query or filter, in characters.
MAX_QUERY_LENGTH = 100
#: Longest accepted identifier (the national form of a local identifier).
MAX_IDENTIFIER_LENGTH = 40
#: Longest e-mail address (RFC 5321 §4.5.3.1.3).
MAX_ADDRESS_LENGTH = 254
#: Words of a name served by an index of their own (1 = name_key, 2..4 = migration 0002).
INDEXED_WORDS = 4

#: Longest page number accepted from a query string, in digits.
_PAGE_DIGITS = 6
#: Beyond any character a name key holds: the upper end of a prefix range.
_PREFIX_END = "\U0010ffff"
_IDENTIFIER_SEPARATORS = re.compile(r"[ .\-\u00a0\u202f]")
_IDENTIFIER_CHARACTERS = re.compile(r"[0-9A-Za-z]+")
_POSTCODE = re.compile(r"[0-9A-Za-z]+")


#: A row's place in the results: its name key, then its id (code point order).
NameOrder = tuple[str, int]


class SearchError(ValueError):
    """A search request cannot be run. ``code`` is stable; ``message`` is for people."""

    def __init__(self, code: str, message: str | Promise, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = str(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class OrganisationSummary:
    name: str
    postcode: str
    city: str


@dataclass(frozen=True, slots=True)
class MailboxSummary:
    address: str
    kind: str


@dataclass(frozen=True, slots=True)
class ProfessionalResult:
    national_id: str
    #: rpps, adeli, nihii or local (see identifier_type_name).
    identifier_type: str
    identifier: str
    civil_title: str
    first_name: str
    last_name: str
    profession_code: str
    profession: str
    specialties: tuple[str, ...]
    organisations: tuple[OrganisationSummary, ...]
    #: Never a red-listed mailbox (liste rouge).
    mailboxes: tuple[MailboxSummary, ...]


@dataclass(frozen=True, slots=True)
class SearchPage:
    results: tuple[ProfessionalResult, ...]
    page: int
    page_size: int
    #: The number of matches, at most COUNT_CAP.
    total: int
    #: More than COUNT_CAP people match.
    total_capped: bool

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_previous(self) -> bool:
        return self.page > 1


# ---------------------------------------------------------------- name words


def _is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def _column() -> str:
    quote = connection.ops.quote_name
    return f"{quote(Professional._meta.db_table)}.{quote('name_key')}"


def _tail_sql(depth: int) -> str:
    """The name key from its word ``depth + 1`` on: the expressions indexed by migration 0002.

    With a space after the key, the tail is empty when the name has fewer words.
    """
    find = "STRPOS" if _is_postgresql() else "INSTR"
    expression = f"({_column()} || ' ')"
    for _unused in range(depth):
        expression = f"SUBSTR({expression}, {find}({expression}, ' ') + 1)"
    return expression


def _has_word_sql() -> str:
    """True when the name has a word starting with the parameter (a word never holds a space)."""
    find = "STRPOS" if _is_postgresql() else "INSTR"
    return f"{find}(' ' || {_column()}, ' ' || %s) > 0"


def _starts_with(field: str, prefix: str) -> Q:
    """``field`` starts with ``prefix``, in a form that uses a b-tree index on both databases.

    PostgreSQL: LIKE 'prefix%' (Django escapes it), served by the pattern-ops
    index. SQLite: LIKE ignores the index of a case-sensitive column, but a
    byte-wise range is exact and is served by it.
    """
    if _is_postgresql():
        return Q(**{f"{field}__startswith": prefix})
    return Q(**{f"{field}__gte": prefix, f"{field}__lt": prefix + _PREFIX_END})


def _has_word(word: str) -> Q:
    # The word is a parameter; the SQL around it is constant.
    return Q(RawSQL(_has_word_sql(), (word,), output_field=BooleanField()))  # noqa: S611


def _in_name_order(expression: F | RawSQL) -> F | RawSQL | Collate:
    """Code point order, the order of migration 0002's indexes (SQLite's by default)."""
    return Collate(expression, "C") if _is_postgresql() else expression


def _prefix(expression: F | RawSQL, prefix: str) -> Q:
    """``expression`` starts with ``prefix``: a range exact in code point order."""
    ordered = _in_name_order(expression)
    return Q(GreaterThanOrEqual(ordered, prefix)) & Q(LessThan(ordered, prefix + _PREFIX_END))


def _name_order() -> tuple[F | RawSQL | Collate, str]:
    """Results by name then id, the same on both databases, read from an index."""
    return _in_name_order(F("name_key")), "id"


def _spaces_at_least(count: int) -> Q:
    """The name has at least ``count`` spaces: the condition of a partial index of 0003.

    Written exactly as the index's condition, with the count in the text (a
    bound parameter would not let the planners see that the index applies).
    """
    column = _column()
    return Q(
        RawSQL(  # noqa: S611 - constant SQL
            f"LENGTH({column}) - LENGTH(REPLACE({column}, ' ', '')) >= {count:d}",
            (),
            output_field=BooleanField(),
        )
    )


def _word_branches(word: str) -> list[Q]:
    """Where a name word starting with ``word`` can be, each branch served by an index.

    The first branch is the first word of the name (the ``name_key`` index);
    the next three, the second to fourth words (migration 0002; the third and
    fourth as partial indexes of 0003, over the names that have such a word);
    the last, any later word of the rare names of five words or more.
    """
    branches = [_prefix(F("name_key"), word)]
    for depth in range(1, INDEXED_WORDS):
        tail = _prefix(RawSQL(_tail_sql(depth), (), output_field=CharField()), word)  # noqa: S611 - constant SQL
        branches.append(tail & _spaces_at_least(depth) if depth > 1 else tail)
    branches.append(_spaces_at_least(INDEXED_WORDS) & _has_word(word))
    return branches


def _estimate(people: QuerySet[Professional]) -> int:
    """About how many rows match, cheaply: never more than ESTIMATE_CAP index entries read.

    PostgreSQL's planner knows from the statistics of the indexes; SQLite
    counts index entries (its statistics know no ranges).
    """
    if _is_postgresql():
        plan = json.loads(people.values("id").explain(format="json"))
        return int(plan[0]["Plan"]["Plan Rows"])
    return people.values("id")[:ESTIMATE_CAP].count()


def _many(people: QuerySet[Professional], branches: list[Q]) -> bool:
    """More than SORT_CAP people in these branches, by the estimates of :func:`_estimate`.

    SQLite counts index entries up to the cap (a few milliseconds here).
    """
    if _is_postgresql():
        return sum(_estimate(people.filter(branch)) for branch in branches) > SORT_CAP
    counted = 0
    for branch in branches:
        counted += people.filter(branch).values("id")[: SORT_CAP + 1 - counted].count()
        if counted > SORT_CAP:
            return True
    return False


def _lead_word(words: list[str]) -> str:
    """The word with the fewest candidates, judged on the first two words of names.

    Most searches are a last name and a first name: the last names' range of
    the name_key index and the first names' index tell which is rarer.
    """
    if len(words) == 1:
        return words[0]

    def estimate(word: str) -> int:
        first, second = _word_branches(word)[:2]
        return sum(_estimate(Professional.objects.filter(branch)) for branch in (first, second))

    return min(words, key=lambda word: (estimate(word), -len(word), word))


def query_words(text: str) -> list[str]:
    """The distinct words of a query in search form, longest first."""
    words = sorted(set(search_key(text).split()), key=lambda w: (-len(w), w))
    # A word that is the prefix of another adds nothing ("mar martin").
    return [w for i, w in enumerate(words) if not any(o.startswith(w) for o in words[:i])]


# ---------------------------------------------------------------- identifiers


def identifier_candidates(text: str) -> list[str] | None:
    """The stored forms an identifier may take, or None when ``text`` is not one.

    An RPPS number is stored as the identifier and as the national form
    ``8`` + RPPS; an ADELI number as ``0`` + ADELI; NIHII and local
    identifiers as typed (REQ-DIRECTORY-NATIONAL).
    """
    compact = _IDENTIFIER_SEPARATORS.sub("", text.strip())
    if not compact or not _IDENTIFIER_CHARACTERS.fullmatch(compact):
        return None
    candidates = {compact}
    for parser in (parse_national_id, parse_rpps, parse_adeli, parse_nihii):
        try:
            identifier = parser(compact)
        except IdentifierError:
            continue
        candidates.add(identifier.value)
        if identifier.national_id is not None:
            candidates.add(identifier.national_id)
    return sorted(candidates)


def _looks_like_identifier(text: str) -> bool:
    compact = _IDENTIFIER_SEPARATORS.sub("", text.strip())
    return compact.isascii() and compact.isdigit()


# ---------------------------------------------------------------- professions


def profession_choices() -> list[tuple[str, str]]:
    """(code, label) of every profession held by an active professional, by code.

    A loose index scan (one index probe per profession, a few dozen) rather
    than a DISTINCT over the whole table.
    """
    table = connection.ops.quote_name(Professional._meta.db_table)
    sql = f"""
        WITH RECURSIVE codes(code) AS (
            SELECT CAST(MIN(profession_code) AS TEXT) FROM {table} WHERE profession_code > ''
            UNION ALL
            SELECT CAST((SELECT MIN(p.profession_code) FROM {table} p
                         WHERE p.profession_code > codes.code) AS TEXT)
            FROM codes WHERE codes.code IS NOT NULL
        )
        SELECT codes.code,
               (SELECT p.profession FROM {table} p
                 WHERE p.profession_code = codes.code AND p.active LIMIT 1)
        FROM codes
        WHERE codes.code IS NOT NULL
        ORDER BY codes.code
    """  # noqa: S608 - the only interpolation is the quoted table name of the model.
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows: Iterable[tuple[str, str | None]] = cursor.fetchall()
    return [(code, label or code) for code, label in rows if label is not None]


def _profession_codes(text: str) -> list[str]:
    """Codes of the professions that ``text`` names, by code or by label (any case, accents)."""
    wanted = text.strip()
    key = search_key(wanted)
    return [
        code
        for code, label in profession_choices()
        if code == wanted or (key and search_key(label).startswith(key))
    ]


# ---------------------------------------------------------------- search


def parse_page(text: str) -> int:
    """A page number as typed in a query string, or SearchError(invalid_page)."""
    number = whole_number(text.strip(), digits=_PAGE_DIGITS)
    if not number:  # None, or 0
        raise SearchError(
            "invalid_page", _("Le numéro de page est un entier à partir de 1."), "page"
        )
    return number


def _check_length(field: str, value: str, limit: int = MAX_QUERY_LENGTH) -> str:
    """``value`` stripped, or SearchError when too long or holding control characters."""
    value = value.strip()
    if len(value) > limit:
        raise SearchError(
            "query_too_long",
            _("La recherche ne peut pas dépasser %(limit)d caractères.") % {"limit": limit},
            field,
        )
    if has_control_characters(value):
        # A NUL cannot even be sent to PostgreSQL: refuse them all, the same way.
        raise SearchError(
            "invalid_characters", _("La recherche contient des caractères invalides."), field
        )
    return value


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


@dataclass(frozen=True, slots=True)
class _Criteria:
    """A search request once checked: what :func:`_page_ids` reads."""

    #: Active people matching the identifier and profession, if given.
    people: QuerySet[Professional]
    #: The same people, for queries that a name index must drive (see _not_leading).
    followers: QuerySet[Professional]
    #: The words of the name, longest first.
    words: list[str]
    #: Where they practise: the normalised postcode and city key prefixes, if given.
    postcode: str
    city_key: str
    #: An identifier, a profession or a place was given.
    filtered: bool

    def selected(self) -> set[NameOrder] | None:
        """The people every criterion but the name selects, or None if over FETCH_CAP.

        Read from the narrowest index: the place's organisations (their own
        index), then their activities (the organisation index), else the
        profession or the identifier. In two queries: told to join and stop
        at a limit, PostgreSQL may read every activity of the country instead.
        """
        place = self.place()
        if place is None:
            selected = _keys(self.people, FETCH_CAP + 1)
            return selected if len(selected) <= FETCH_CAP else None
        sites = Organisation.objects.filter(self.sites())
        site_ids = list(sites.values_list("id", flat=True)[: SITE_CAP + 1])
        if len(site_ids) > SITE_CAP:  # their activities are by the thousand
            return None
        working = Activity.objects.filter(active=True, organisation_id__in=site_ids)
        ids = list(working.values_list("professional_id", flat=True)[: FETCH_CAP + 1])
        if len(ids) > FETCH_CAP:  # activities, not people: one may work at several sites
            return None
        return set(self.people.filter(id__in=set(ids)).values_list("name_key", "id"))

    def place(self, to_activity: str = "") -> Q | None:
        """An active activity at an active organisation of that place (None: anywhere).

        ``to_activity`` is the path from the queried model to Activity.
        """
        if not (self.postcode or self.city_key):
            return None
        return Q(**{f"{to_activity}active": True}) & self.sites(f"{to_activity}organisation__")

    def sites(self, to_organisation: str = "") -> Q:
        """An active organisation of that place (call only when a place is given)."""
        place = Q(**{f"{to_organisation}active": True})
        if self.postcode:
            place &= _starts_with(f"{to_organisation}postcode", self.postcode)
        if self.city_key:
            place &= _starts_with(f"{to_organisation}city_key", self.city_key)
        return place


def _criteria(*, q: str, profession: str, postcode: str, city: str, identifier: str) -> _Criteria:
    """The checked criteria: SearchError for what cannot be searched."""
    people = Professional.objects.filter(active=True)
    words: list[str] = []
    identifiers: list[str] = []
    if identifier:
        found = identifier_candidates(identifier)
        if found is None:
            raise SearchError(
                "invalid_identifier",
                _("Un identifiant ne contient que des chiffres et des lettres."),
                "identifier",
            )
        identifiers = found
    if q:
        if _looks_like_identifier(q):
            identifiers += identifier_candidates(q) or []
        else:
            words = query_words(q)
            if not words:
                raise SearchError("empty_query", _("La recherche ne contient aucun mot."), "q")
    if identifiers:
        people = people.filter(Q(national_id__in=identifiers) | Q(identifier__in=identifiers))
    followers = people
    if profession:
        codes = _profession_codes(profession)
        people = people.filter(profession_code__in=codes)
        followers = followers.filter(_not_leading("profession_code", codes))
    compact_postcode = postcode.replace(" ", "").upper()
    if postcode and not _POSTCODE.fullmatch(compact_postcode):
        raise SearchError(
            "invalid_postcode",
            _("Un code postal ne contient que des chiffres et des lettres."),
            "postcode",
        )
    city_key = search_key(city)
    if city and not city_key:
        raise SearchError("invalid_city", _("La commune est illisible."), "city")
    filtered = bool(identifiers or profession or postcode or city)
    return _Criteria(people, followers, words, compact_postcode, city_key, filtered)


def _not_leading(field: str, values: list[str]) -> Q:
    """``field IN values``, as a filter that no index of ``field`` serves on SQLite.

    Without statistics, SQLite prefers an equality to a range whatever their
    sizes: given a profession and a name word, it would read every person of
    the profession (a third of the country for doctors) rather than the
    word's few hundred candidates. The unary ``+`` is SQLite's documented way
    to keep a term out of index choice. PostgreSQL chooses from its statistics.
    """
    if _is_postgresql() or not values:
        return Q(**{f"{field}__in": values})
    column = f"{_column().rsplit('.', 1)[0]}.{connection.ops.quote_name(field)}"
    placeholders = ", ".join(["%s"] * len(values))
    return Q(RawSQL(f"+{column} IN ({placeholders})", values, output_field=BooleanField()))  # noqa: S611 - constant SQL, values bound


def search_directory(
    *,
    q: str = "",
    profession: str = "",
    postcode: str = "",
    city: str = "",
    identifier: str = "",
    page: int = 1,
    page_size: int | None = None,
) -> SearchPage:
    """Search active professionals (REQ-DIRECTORY): at least one criterion is required.

    Raises :class:`SearchError` for bad input. Red-listed mailboxes never
    appear in the results (liste rouge).
    """
    size = page_size if page_size is not None else settings.DIRECTORY_PAGE_SIZE
    q = _check_length("q", q)
    profession = _check_length("profession", profession)
    postcode = _check_length("postcode", postcode)
    city = _check_length("city", city)
    identifier = _check_length("identifier", identifier, MAX_IDENTIFIER_LENGTH)
    if page < 1:
        raise SearchError("invalid_page", _("Le numéro de page commence à 1."), "page")
    if (page - 1) * size >= COUNT_CAP:
        raise SearchError(
            "page_too_far",
            _("Seules les %(cap)d premières réponses sont consultables : précisez la recherche.")
            % {"cap": COUNT_CAP},
            "page",
        )
    if not any((q, profession, postcode, city, identifier)):
        raise SearchError("no_criteria", _("Indiquez au moins un critère de recherche."))

    criteria = _criteria(
        q=q, profession=profession, postcode=postcode, city=city, identifier=identifier
    )
    # Not on SQLite: its transactions here take the write lock (BEGIN IMMEDIATE).
    with transaction.atomic() if _is_postgresql() else nullcontext():
        if _is_postgresql():
            with connection.cursor() as cursor:
                # Each query reads at most a few thousand index entries: starting
                # parallel workers costs more than it saves (20 ms here, loaded).
                cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                # Each is written for an index. Told to stop at a limit, PostgreSQL
                # may scan a table instead, hoping to meet the rows soon (the
                # activities of a place's 1,400 structures: 48 ms at 200,000 lines).
                cursor.execute("SET LOCAL enable_seqscan = off")
        page_ids, total, capped = _page_ids(criteria, (page - 1) * size, size)
    rows = Professional.objects.filter(id__in=page_ids).prefetch_related(
        Prefetch(
            "activities",
            queryset=Activity.objects.filter(active=True)
            .select_related("organisation")
            .order_by("id"),
        ),
        Prefetch(
            "mailboxes",
            # Liste rouge: never listed, only resolvable by exact address.
            queryset=Mailbox.objects.filter(active=True, red_list=False).order_by("address"),
        ),
    )
    by_id = {person.pk: person for person in rows}
    return SearchPage(
        results=tuple(_result(by_id[pk]) for pk in page_ids),
        page=page,
        page_size=size,
        total=total,
        total_capped=capped,
    )


def _keys(people: QuerySet[Professional], limit: int = COUNT_CAP + 1) -> set[NameOrder]:
    return set(people.values_list("name_key", "id")[:limit])


def _name_matches(name_key: str, words: list[str]) -> bool:
    """Every word starts a word of the name: what _has_word checks in SQL."""
    spaced = " " + name_key
    return all(" " + word in spaced for word in words)


def _sorted_page(keys: set[NameOrder], start: int, size: int) -> list[int]:
    # Python compares strings by code point, as the databases do here (see _name_order).
    return [pk for _key, pk in sorted(keys)[start : start + size]]


def _ordered_keys(people: QuerySet[Professional], count: int) -> list[NameOrder]:
    """The first ``count`` keys in name order."""
    return list(people.order_by(*_name_order()).values_list("name_key", "id")[:count])


def _walk(people: QuerySet[Professional], start: int, size: int) -> list[int]:
    return list(people.order_by(*_name_order()).values_list("id", flat=True)[start : start + size])


def _walked(ids: list[int], start: int, size: int) -> tuple[list[int], int, bool]:
    """A page read by a walk, and the total: "1000+" unless the walk reached the end.

    A walk stops at the page, so it does not count; a short page (not an
    empty one past the end) says that every match has been seen.
    """
    if len(ids) < size and (ids or start == 0):
        return ids, min(start + len(ids), COUNT_CAP), start + len(ids) > COUNT_CAP
    return ids, COUNT_CAP, True


def _page_ids(criteria: _Criteria, start: int, size: int) -> tuple[list[int], int, bool]:
    """The ids of a page of results in name order, the total, and whether it is capped.

    No query reads the whole table: each reads a bounded number of
    candidates from an index, or walks the name-order index where the
    matches are many and spread over the alphabet (a page of them comes
    soon). In order:

    - with an identifier, a profession or a place, the people these select
      are read from their indexes (the place's organisations, then their
      activities), up to FETCH_CAP of them; if no more, the name words are
      checked here and the matches sorted here;
    - otherwise, without name words, the matches are many: walk the names;
    - with name words, the lead word's matches come in two parts. Those
      whose last name starts with it ("mart" for MARTIN) sit together in
      name order; those matching a later word (a first name) are spread over
      the alphabet. Many later-word matches: walk the name order. Few: they
      are fetched through their indexes and merged with the first rows of
      the last-name range. The place, if any, is checked for each candidate.

    A set of candidates is sorted here rather than by the database: told to
    sort a few hundred ids, a planner may walk the whole name index instead.
    """
    words = criteria.words
    selected = criteria.selected() if criteria.filtered else None
    if selected is not None:
        matches = {key for key in selected if _name_matches(key[0], words)}
        return (
            _sorted_page(matches, start, size),
            min(len(matches), COUNT_CAP),
            len(matches) > COUNT_CAP,
        )
    people = criteria.people
    place = criteria.place()
    if place is not None:
        people = people.filter(Exists(Activity.objects.filter(place, professional=OuterRef("pk"))))
    if not words:
        return _walked(_walk(people, start, size), start, size)
    lead = _lead_word(words)
    for word in words:
        if word != lead:
            people = people.filter(_has_word(word))
    first_branch, *later_branches = _word_branches(lead)
    later: set[NameOrder] = set()
    # The later words' indexes lead these, the profession only filters.
    followers = criteria.followers
    if place is not None:
        followers = followers.filter(
            Exists(Activity.objects.filter(place, professional=OuterRef("pk")))
        )
    for word in words:
        if word != lead:
            followers = followers.filter(_has_word(word))
    for branch in later_branches:
        later |= _keys(followers.filter(branch))
        if len(later) > COUNT_CAP:
            walking = people.filter(_has_word(lead))
            # The second word's branch holds nearly all of them (names of three
            # words or more are a few percent), and it alone has statistics.
            if _many(followers, later_branches[:1]):
                # By the ten thousand (a common first name): they are everywhere in
                # name order, and a walk of the names meets a page of them soon.
                return _walked(_walk(walking, start, size), start, size)
            # Fewer: they may gather where a name starts (MARTIN, médecin: half-way
            # through the alphabet, far along a walk). The first rows of the lead
            # word's last names in name order (an index gives that order), and the
            # later-word matches read whole and sorted here: asked to sort them, a
            # planner may walk the name index instead.
            page = set(_ordered_keys(people.filter(first_branch), start + size))
            for each in later_branches:
                found = _keys(followers.filter(each), SORT_CAP + 1)
                if len(found) > SORT_CAP:
                    return _walked(_walk(walking, start, size), start, size)
                page |= set(sorted(found)[: start + size])
            return _sorted_page(page, start, size), COUNT_CAP, True
    first_word = people.filter(first_branch)
    first = _keys(first_word)
    if len(first) > COUNT_CAP:
        # Only the first rows of a long last-name range can be on the page.
        ordered = first_word.order_by(*_name_order()).values_list("name_key", "id")
        return _sorted_page(set(ordered[: start + size]) | later, start, size), COUNT_CAP, True
    matches = first | later
    return (
        _sorted_page(matches, start, size),
        min(len(matches), COUNT_CAP),
        len(matches) > COUNT_CAP,
    )


_IDENTIFIER_TYPE_NAMES: dict[str, str] = {
    IdentifierType.RPPS.value: "rpps",
    IdentifierType.ADELI.value: "adeli",
    IdentifierType.NIHII.value: "nihii",
    IdentifierType.LOCAL.value: "local",
}


def identifier_type_name(code: str) -> str:
    """The name of a stored identifier type: rpps, adeli, nihii or local."""
    return _IDENTIFIER_TYPE_NAMES.get(code, "local")


def _result(person: Professional) -> ProfessionalResult:
    activities = list(person.activities.all())
    organisations: dict[int, OrganisationSummary] = {}
    specialties: dict[str, None] = {}
    for activity in activities:
        if activity.skill:
            specialties[activity.skill] = None
        organisation = activity.organisation
        if organisation is not None and organisation.active:
            organisations.setdefault(
                organisation.pk,
                OrganisationSummary(
                    name=organisation.name or organisation.trade_name,
                    postcode=organisation.postcode,
                    city=organisation.city,
                ),
            )
    return ProfessionalResult(
        national_id=person.national_id,
        identifier_type=identifier_type_name(person.identifier_type),
        identifier=person.identifier,
        civil_title=person.civil_title,
        first_name=person.first_name,
        last_name=person.last_name,
        profession_code=person.profession_code,
        profession=person.profession,
        specialties=tuple(specialties),
        organisations=tuple(organisations.values()),
        mailboxes=tuple(MailboxSummary(m.address, m.kind) for m in person.mailboxes.all()),
    )


def owners_active_sql(alias: str) -> str:
    """SQL: the professional and the organisation the mailbox ``alias`` belongs to, if any,
    are still active members of the directory.

    Half of the rule by which a mailbox takes mail (REQ-DIRECTORY): it is
    active itself, and so is whoever it belongs to. An import deactivates a
    professional or an organisation that left the national directory (and an
    admin may), not always their mailboxes: a send must not reach them, nor
    come from them. :func:`resolve_address` and :func:`takes_mail` decide the
    same in Python.
    """
    quote = connection.ops.quote_name
    professional = quote(Professional._meta.db_table)
    organisation = quote(Organisation._meta.db_table)
    return (
        f"NOT EXISTS (SELECT 1 FROM {professional} AS owner_p"  # noqa: S608 - our names
        f" WHERE owner_p.id = {alias}.professional_id AND NOT owner_p.active)"
        f" AND NOT EXISTS (SELECT 1 FROM {organisation} AS owner_o"
        f" WHERE owner_o.id = {alias}.organisation_id AND NOT owner_o.active)"
    )


def takes_mail(mailbox: Mailbox) -> bool:
    """The mailbox is active, and so are the professional and organisation it belongs to."""
    if not mailbox.active:
        return False
    owners = (
        (Professional, mailbox.professional_id),
        (Organisation, mailbox.organisation_id),
    )
    return not any(
        pk is not None and model.objects.filter(pk=pk, active=False).exists()
        for model, pk in owners
    )


def resolve_address(address: str) -> Mailbox | None:
    """The active mailbox with exactly this address, red-listed or not, or None.

    For authenticated members only: callers check that first (a red-listed
    address must not be confirmed to strangers). The owner must still be an
    active member of the directory (REQ-DIRECTORY).
    """
    given = address.strip()
    if not given or len(given) > MAX_ADDRESS_LENGTH or has_control_characters(given):
        return None
    mailbox = (
        Mailbox.objects.filter(Q(address=given) | Q(address=given.lower()), active=True)
        .select_related("professional", "organisation")
        .order_by("id")
        .first()
    )
    if mailbox is None:
        return None
    owners = (mailbox.professional, mailbox.organisation)
    if any(owner is not None and not owner.active for owner in owners):
        return None
    return mailbox

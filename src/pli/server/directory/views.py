"""Server-rendered pages of the directory (thin: the queries live in queries.py)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from pli.server.directory.queries import (
    COUNT_CAP,
    MAX_QUERY_LENGTH,
    SearchError,
    SearchPage,
    parse_page,
    profession_choices,
    search_directory,
)

#: The fields of the search form, as they appear in the query string.
FORM_FIELDS = ("q", "profession", "place")


def home(request: HttpRequest) -> HttpResponse:
    return redirect("directory-search")


def _place(text: str) -> tuple[str, str]:
    """(postcode, city) from the one "code postal ou commune" field."""
    compact = text.replace(" ", "")
    if compact[:1].isdigit():
        return text, ""
    return "", text


@login_required
def search_page(request: HttpRequest) -> HttpResponse:
    """The directory search form and its results (REQ-DIRECTORY), French first."""
    values = {name: request.GET.get(name, "").strip() for name in FORM_FIELDS}
    found: SearchPage | None = None
    error: SearchError | None = None
    if any(values.values()):
        postcode, city = _place(values["place"])
        try:
            found = search_directory(
                q=values["q"],
                profession=values["profession"],
                postcode=postcode,
                city=city,
                page=parse_page(request.GET.get("page", "1")),
            )
        except SearchError as failure:
            error = failure
    filled = {name: value for name, value in values.items() if value}
    context = {
        "values": values,
        "professions": profession_choices(),
        "found": found,
        "error": error,
        "count_cap": COUNT_CAP,
        "max_length": MAX_QUERY_LENGTH,
        "previous_url": _page_url(filled, found.page - 1) if found and found.has_previous else "",
        "next_url": _page_url(filled, found.page + 1) if found and found.has_next else "",
    }
    return render(request, "directory/search.html", context, status=400 if error else 200)


def _page_url(filled: dict[str, str], page: int) -> str:
    return "?" + urlencode({**filled, "page": page})

"""Server-rendered pages of the directory (thin: query helpers live in queries.py)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render


def home(request: HttpRequest) -> HttpResponse:
    return redirect("directory-search")


def search_page(request: HttpRequest) -> HttpResponse:
    return render(request, "directory/search.html", {"query": request.GET.get("q", "")})

"""The answers to requests that fail before or outside any view: 400, 403, 404, 500
and a refused CSRF check.

Django's own pages for these are in English, carry an inline ``<style>`` that
the Content-Security-Policy blocks and, for CSRF, speak of cookies and DEBUG
to a doctor. Pli's web pages answer in the interface's language, within the
site's layout; the JSON API (``/api/…``) answers as its endpoints do, with a
stable ``code`` and a translated ``message``. A missing page and one the
caller may not see give the same 404 (CONVENTIONS: "missing" and "not yours"
alike). Nothing about the failure (exception, path, reason) is shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils.translation import gettext as _

logger = logging.getLogger(__name__)

#: A handler of a status that takes the exception (Django's handler400, handler403…).
Handler = Callable[[HttpRequest, Exception | None], HttpResponse]


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def _answer(
    request: HttpRequest, status: int, code: str, message: str, template: str = ""
) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"code": code, "message": message}, status=status)
    page = loader.get_template(template or f"errors/{status}.html")
    return HttpResponse(page.render({"message": message}, request), status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _answer(request, 400, "bad_request", _("Cette requête n'a pas pu être comprise."))


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _answer(request, 403, "forbidden", _("Vous n'avez pas accès à cette page."))


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _answer(request, 404, "not_found", _("Introuvable."))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form sent without its token, or with a stale one (a page left open, cookies off).

    ``reason`` is Django's technical account: logged, never shown.
    """
    logger.warning("CSRF check refused: %s", reason)
    return _answer(
        request, 403, "csrf_failed", _("Jeton CSRF absent ou invalide."), "errors/403_csrf.html"
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """An unexpected failure (already logged by Django with its traceback, never shown).

    Rendered without the request's context processors, which may need what just
    failed (the database, the session).
    """
    message = _("Une erreur inattendue s'est produite.")
    if _is_api(request):
        return JsonResponse({"code": "internal_error", "message": message}, status=500)
    return HttpResponse(
        loader.get_template("errors/500.html").render({"message": message}), status=500
    )

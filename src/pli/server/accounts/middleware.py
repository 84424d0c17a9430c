"""Content-Security-Policy and the gate that keeps half-enrolled accounts out."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

#: No inline script or style anywhere (issue "accounts", item 8); QR codes are data: images.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


#: Paths a signed-in user may reach before acknowledging a new charter version.
# /api/auth/ (logout, CSRF token) and the session list and revocation: a client must be
# able to end or revoke its sessions before (or without) reading a new charter.
_GATE_EXEMPT = (
    "/compte/",
    "/static/",
    "/api/health",
    "/i18n/",
    "/api/auth/",
    "/api/accounts/sessions",
)


class EnrolmentGateMiddleware:
    """A signed-in user who has not acknowledged the current charter reads it first.

    REQ-INFO-PRO: professionals acknowledge each version of the charter.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not request.path.startswith(_GATE_EXEMPT):
            from pli.server.accounts.actions import needs_charter  # noqa: PLC0415
            from pli.server.accounts.sessions import CHARTER_DUE  # noqa: PLC0415

            # The session guard read it with the session's record, in this request;
            # asked here only if the guard did not (a request without a record).
            due = vars(request).get(CHARTER_DUE)
            if due is None:
                due = needs_charter(user)
            if due:
                if request.path.startswith("/api/"):
                    from django.http import JsonResponse  # noqa: PLC0415

                    return JsonResponse({"code": "charter_required"}, status=403)
                return HttpResponseRedirect(reverse("accounts:charter"))
        return self.get_response(request)

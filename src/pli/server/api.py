"""The JSON API (django-ninja), documented by OpenAPI at /api/openapi.json."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import NinjaAPI, Schema
from ninja.security import django_auth

from pli.server.accounts.api import router as accounts_router
from pli.server.accounts.api_auth import router as auth_router
from pli.server.accounts.api_keys import router as keys_router
from pli.server.compliance.api import router as compliance_router
from pli.server.directory.api import router as directory_router
from pli.server.directory.api_certificates import router as certificates_router
from pli.server.messaging.api import router as messaging_router
from pli.server.messaging.api_uploads import router as uploads_router

# Every endpoint requires an authenticated session (with CSRF on unsafe methods) unless it
# opts out explicitly, like the health check and the login steps (issue "accounts", item 4).
api = NinjaAPI(title="Pli", version="0.1.0", urls_namespace="api", auth=django_auth)


class HealthOut(Schema):
    status: str


@api.get("/health", auth=None, response=HealthOut, tags=["health"])
def health(request: HttpRequest) -> HealthOut:
    """Liveness for load balancers: no data, no authentication."""
    return HealthOut(status="ok")


# Django tries the URL patterns in order, one by one: messaging, the most frequent
# requests by far (every send and every mailbox listing), first. No two routers'
# paths overlap, so the order changes nothing else.
api.add_router("/", messaging_router)
api.add_router("/", uploads_router)
api.add_router("/directory/", directory_router)
api.add_router("/directory/", certificates_router)
api.add_router("/accounts/", accounts_router)
api.add_router("/accounts/", keys_router)
api.add_router("/auth/", auth_router)
api.add_router("/compliance/", compliance_router)

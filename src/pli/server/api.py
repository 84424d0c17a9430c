"""The JSON API (django-ninja), documented by OpenAPI at /api/openapi.json."""

from __future__ import annotations

from ninja import NinjaAPI

from pli.server.directory.api import router as directory_router
from pli.server.directory.api_certificates import router as certificates_router

api = NinjaAPI(title="Pli", version="0.1.0", urls_namespace="api")
api.add_router("/directory/", directory_router)
api.add_router("/directory/", certificates_router)

"""WSGI entry point for gunicorn (``pli serve``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pli.server.settings")
application = get_wsgi_application()

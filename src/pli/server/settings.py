"""Django settings, all from ``PLI_*`` environment variables (see pli.server.config)."""

from __future__ import annotations

from pathlib import Path

import django_stubs_ext

from pli.server.config import ConfigurationError, data_dir, database, flag, secret, setting

django_stubs_ext.monkeypatch()

DATA_DIR = data_dir()
BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = secret("SECRET_KEY", fallback_file=DATA_DIR / "secret_key")
if len(SECRET_KEY) < 32:
    raise ConfigurationError("PLI_SECRET_KEY must be at least 32 characters")
DEBUG = flag("DEBUG")
ALLOWED_HOSTS = [
    h.strip()
    for h in (setting("ALLOWED_HOSTS", "127.0.0.1,localhost") or "").split(",")
    if h.strip()
]
HTTPS = flag("HTTPS")
if HTTPS and DEBUG:
    raise ConfigurationError("PLI_HTTPS and PLI_DEBUG cannot both be on")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pli.server.directory",
    "pli.server.accounts",
    "pli.server.audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "pli.server.accounts.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "pli.server.accounts.sessions.SessionGuardMiddleware",
    "pli.server.accounts.middleware.EnrolmentGateMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "pli.server.urls"
WSGI_APPLICATION = "pli.server.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database(DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# Argon2id first (DESIGN: passwords); older hashes are upgraded at the next login.
PLI_ARGON2_MEMORY_KIB = int(setting("ARGON2_MEMORY_KIB", "65536") or 65536)
PLI_ARGON2_TIME = int(setting("ARGON2_TIME", "3") or 3)
PLI_ARGON2_PARALLELISM = int(setting("ARGON2_PARALLELISM", "4") or 4)
if PLI_ARGON2_MEMORY_KIB < 8 * PLI_ARGON2_PARALLELISM or PLI_ARGON2_TIME < 1:
    raise ConfigurationError("PLI_ARGON2_MEMORY_KIB / PLI_ARGON2_TIME are too small")
PASSWORD_HASHERS = [
    "pli.server.accounts.hashers.PliArgon2Hasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# French first (the users are French-speaking health professionals), English available.
LANGUAGE_CODE = "fr"
LANGUAGES = [("fr", "Français"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "Europe/Paris"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
BLOB_DIR = Path(setting("BLOB_DIR") or DATA_DIR / "blobs")

# Security headers and cookies.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Lax, not Strict: the OpenID Connect provider sends the browser back with a
# top-level GET that must carry the session (state, nonce); Lax still keeps
# the cookie off every cross-site POST and sub-request.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
if HTTPS:
    SECURE_HSTS_SECONDS = 31536000
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Logs carry identifiers and codes, never message content (no health data in logs).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": setting("LOG_LEVEL", "INFO")},
}

# Outgoing e-mail (activation codes, inactivity warnings): SMTP in production,
# files in the data directory's outbox for the demo and the tests.
EMAIL_MODE = setting("EMAIL", "file")
if EMAIL_MODE == "smtp":
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = setting("SMTP_HOST", "127.0.0.1") or ""
    EMAIL_PORT = int(setting("SMTP_PORT", "587") or 587)
    EMAIL_HOST_USER = setting("SMTP_USER", "") or ""
    EMAIL_HOST_PASSWORD = secret("SMTP_PASSWORD") if EMAIL_HOST_USER else ""
    EMAIL_USE_TLS = flag("SMTP_STARTTLS", True)
elif EMAIL_MODE == "file":
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(DATA_DIR / "outbox")
else:
    raise ConfigurationError("PLI_EMAIL must be smtp or file")
DEFAULT_FROM_EMAIL = setting("FROM_EMAIL", "pli@localhost") or "pli@localhost"
#: The address users reach Pli at (links in e-mails, WebAuthn origin).
PLI_BASE_URL = (setting("BASE_URL", "http://127.0.0.1:8000") or "").rstrip("/")

# Sessions (issue "accounts"): idle and absolute timeouts, enforced by
# pli.server.accounts.sessions.SessionGuardMiddleware.
PLI_SESSION_IDLE_MINUTES = int(setting("SESSION_IDLE_MINUTES", "15") or 15)
PLI_SESSION_MAX_HOURS = int(setting("SESSION_MAX_HOURS", "12") or 12)
SESSION_COOKIE_AGE = PLI_SESSION_MAX_HOURS * 3600
SESSION_COOKIE_NAME = "pli_session"
CSRF_COOKIE_HTTPONLY = True
LOGIN_URL = "accounts:login"

#: Page size of directory searches.
DIRECTORY_PAGE_SIZE = 20

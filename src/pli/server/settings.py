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
    "pli.server.compliance",
    "pli.server.messaging",
    "pli.server.webmail",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "pli.server.accounts.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    # Django's, with the user read in the session's own query (accounts/session_auth.py).
    "pli.server.accounts.session_auth.AuthenticationMiddleware",
    "pli.server.accounts.sessions.SessionGuardMiddleware",
    "pli.server.accounts.middleware.EnrolmentGateMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# No file part is kept from any request but the compose views', which install their
# own handler (pli/server/file_uploads.py): the CSRF check parses every POST's body.
FILE_UPLOAD_HANDLERS = ["pli.server.file_uploads.RefuseFiles"]

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
                # The login page shows the buttons of the configured external logins.
                "pli.server.accounts.external_views.external_login_options",
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
# Database sessions, loaded with their registry record, user and charter state in one
# query (accounts/session_auth.py; the session rules of accounts/sessions.py).
SESSION_ENGINE = "pli.server.accounts.session_auth"
AUTHENTICATION_BACKENDS = [
    "pli.server.accounts.session_auth.SessionUserBackend",
    # Sessions opened before the backend above existed name Django's own: still honoured
    # (their user read in a query of its own) until they end, at most PLI_SESSION_MAX_HOURS.
    "django.contrib.auth.backends.ModelBackend",
]
SESSION_COOKIE_HTTPONLY = True
# Lax, not Strict: the OpenID Connect provider sends the browser back with a
# top-level GET that must carry the session (state, nonce); Lax still keeps
# the cookie off every cross-site POST and sub-request.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
# The language chosen in the footer (set_language): a preference, kept a year, never
# read by a script; it outlives the session (a shared workstation keeps its language).
LANGUAGE_COOKIE_NAME = "pli_language"
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600
LANGUAGE_COOKIE_SECURE = HTTPS
LANGUAGE_COOKIE_HTTPONLY = True
LANGUAGE_COOKIE_SAMESITE = "Lax"
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
# localhost, not 127.0.0.1: browsers refuse an IP address as WebAuthn relying party id.
PLI_BASE_URL = (setting("BASE_URL", "http://localhost:8000") or "").rstrip("/")

# Sessions (issue "accounts"): idle and absolute timeouts, enforced by
# pli.server.accounts.sessions.SessionGuardMiddleware.
PLI_SESSION_IDLE_MINUTES = int(setting("SESSION_IDLE_MINUTES", "15") or 15)
PLI_SESSION_MAX_HOURS = int(setting("SESSION_MAX_HOURS", "12") or 12)
SESSION_COOKIE_AGE = PLI_SESSION_MAX_HOURS * 3600
SESSION_COOKIE_NAME = "pli_session"
CSRF_COOKIE_HTTPONLY = True
# A refused form in the interface's language, never Django's technical page.
CSRF_FAILURE_VIEW = "pli.server.errors.csrf_failure"
LOGIN_URL = "accounts:login"

#: Page size of directory searches.
DIRECTORY_PAGE_SIZE = 20

# --- Key custody (issue "accounts", item 5; DESIGN "Key custody") -------------------------------
# The operator CA that issues mailbox certificates: a CaDirectory (pli.client.castore).
# Its passphrase (PLI_CA_PASSPHRASE or PLI_CA_PASSPHRASE_FILE, default <CA dir>/passphrase)
# is read only when a certificate is issued (pli.server.accounts.operator_ca), so that a
# server without a CA still starts; issuing then fails with the code ca_not_configured.
PLI_CA_DIR = Path(setting("CA_DIR") or DATA_DIR / "ca")
PLI_CA_CERTIFICATE_DAYS = int(setting("CA_CERTIFICATE_DAYS", "1095") or 1095)
PLI_CA_CRL_DAYS = int(setting("CA_CRL_DAYS", "7") or 7)
if not 1 <= PLI_CA_CERTIFICATE_DAYS <= 3650 or not 1 <= PLI_CA_CRL_DAYS <= 365:
    raise ConfigurationError("PLI_CA_CERTIFICATE_DAYS / PLI_CA_CRL_DAYS are out of range")
# The vault's Argon2id cost (RFC 9106 §4): the passphrase hashing cost unless set apart.
PLI_VAULT_MEMORY_KIB = int(setting("VAULT_MEMORY_KIB") or PLI_ARGON2_MEMORY_KIB)
PLI_VAULT_TIME = int(setting("VAULT_TIME") or PLI_ARGON2_TIME)
PLI_VAULT_PARALLELISM = int(setting("VAULT_PARALLELISM") or PLI_ARGON2_PARALLELISM)
# Bounded above as pli.crypto bounds the records it reads (an edited record cannot exhaust memory).
if not (
    8 * PLI_VAULT_PARALLELISM <= PLI_VAULT_MEMORY_KIB <= 1024 * 1024
    and 1 <= PLI_VAULT_TIME <= 16
    and 1 <= PLI_VAULT_PARALLELISM <= 16
):
    raise ConfigurationError(
        "PLI_VAULT_MEMORY_KIB / PLI_VAULT_TIME / PLI_VAULT_PARALLELISM are out of range"
    )
#: The cookie that carries the session's vault unlocking key (pli.server.accounts.custody).
PLI_VAULT_COOKIE_NAME = "pli_vault"
# --- end of key custody ------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
from ipaddress import ip_network as _ip_network  # noqa: E402 - kept with the section using it

# External login (REQ-AUTH-CARD): OpenID Connect relying party and TLS client certificates.
# Read by pli.server.accounts.oidc and pli.server.accounts.certificate_login; both are off
# unless configured. See docs/operations/reverse-proxy.md.
# ----------------------------------------------------------------------------------------------
#: The national identity provider (e.g. Pro Santé Connect): its issuer URL, exactly as in its
#: discovery document (OpenID Connect Discovery 1.0 §4.3). https, or http on loopback only.
PLI_OIDC_ISSUER = setting("OIDC_ISSUER", "") or ""
PLI_OIDC_CLIENT_ID = setting("OIDC_CLIENT_ID", "") or ""
PLI_OIDC_CLIENT_SECRET = ""
#: What the login button says.
PLI_OIDC_PROVIDER_NAME = setting("OIDC_PROVIDER_NAME", "Pro Santé Connect") or ""
PLI_OIDC_SCOPES = setting("OIDC_SCOPES", "openid") or "openid"
#: Claims carrying the national identifier (8 + RPPS), tried in this order, in the ID token
#: and, when it lacks the first, the UserInfo response. Pro Santé Connect: SubjectNameID.
PLI_OIDC_ID_CLAIMS = [
    claim.strip()
    for claim in (setting("OIDC_ID_CLAIM", "SubjectNameID,preferred_username") or "").split(",")
    if claim.strip()
]
if PLI_OIDC_ISSUER:
    if not PLI_OIDC_CLIENT_ID:
        raise ConfigurationError("PLI_OIDC_ISSUER is set: PLI_OIDC_CLIENT_ID is needed too")
    PLI_OIDC_CLIENT_SECRET = secret("OIDC_CLIENT_SECRET")
    _oidc_issuer = PLI_OIDC_ISSUER.split("/")
    _oidc_loopback = len(_oidc_issuer) > 2 and _oidc_issuer[2].rsplit(":", 1)[0] in (
        "127.0.0.1",
        "[::1]",
        "localhost",
    )
    if not (
        PLI_OIDC_ISSUER.startswith("https://")
        or (PLI_OIDC_ISSUER.startswith("http://") and _oidc_loopback)
    ):
        raise ConfigurationError("PLI_OIDC_ISSUER must be an https:// URL")
    if "openid" not in PLI_OIDC_SCOPES.split():
        raise ConfigurationError("PLI_OIDC_SCOPES must include openid")
    if not PLI_OIDC_ID_CLAIMS:
        raise ConfigurationError("PLI_OIDC_ID_CLAIM names no claim")
elif PLI_OIDC_CLIENT_ID or setting("OIDC_CLIENT_SECRET") or setting("OIDC_CLIENT_SECRET_FILE"):
    raise ConfigurationError("PLI_OIDC_CLIENT_ID / _SECRET are set but PLI_OIDC_ISSUER is not")

#: PEM bundle of the authorities whose client certificates log in (e.g. the IGC-Santé
#: authorities of professional cards, or the operator's CA). Every certificate is an anchor.
PLI_CLIENT_CA_FILE = setting("CLIENT_CA_FILE", "") or ""
#: CRLs of those authorities, comma-separated files (PEM or DER), reloaded when they change.
#: When any is given, every certificate below an anchor must be covered by a current one.
PLI_CLIENT_CRL_FILES = [
    name.strip() for name in (setting("CLIENT_CRL_FILES", "") or "").split(",") if name.strip()
]
#: The request header in which a TLS-terminating reverse proxy passes the URL-escaped PEM
#: (nginx: $ssl_client_escaped_cert), e.g. X-SSL-Client-Cert; trusted only from the
#: addresses of PLI_TRUSTED_PROXIES (comma-separated addresses or networks).
PLI_TLS_CLIENT_CERT_HEADER = setting("TLS_CLIENT_CERT_HEADER", "") or ""
PLI_TRUSTED_PROXIES = [
    entry.strip() for entry in (setting("TRUSTED_PROXIES", "") or "").split(",") if entry.strip()
]
if PLI_TLS_CLIENT_CERT_HEADER and not PLI_TRUSTED_PROXIES:
    raise ConfigurationError(
        "PLI_TLS_CLIENT_CERT_HEADER is set: PLI_TRUSTED_PROXIES must list the proxies' addresses"
    )
if PLI_TLS_CLIENT_CERT_HEADER and not PLI_CLIENT_CA_FILE:
    raise ConfigurationError("PLI_TLS_CLIENT_CERT_HEADER is set: PLI_CLIENT_CA_FILE is needed too")
if PLI_CLIENT_CRL_FILES and not PLI_CLIENT_CA_FILE:
    raise ConfigurationError("PLI_CLIENT_CRL_FILES is set but PLI_CLIENT_CA_FILE is not")
for _proxy in PLI_TRUSTED_PROXIES:
    try:
        _ip_network(_proxy, strict=False)
    except ValueError:
        raise ConfigurationError(
            f"PLI_TRUSTED_PROXIES: {_proxy!r} is not an address or a network"
        ) from None
# ---------------------------------------------------------------- end of external login

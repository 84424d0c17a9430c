"""OpenID Connect relying party for a national identity provider (REQ-AUTH-CARD).

Pro Santé Connect, the French professionals' identity provider, authenticates
with the professional card (CPS) or its mobile equivalent (e-CPS): for Pli,
such a login is strong authentication by itself (REQ-AUTH-STRONG).

The authorization code flow of OpenID Connect Core 1.0 §3.1, with:

* ``state`` bound to the browser's session against forged callbacks
  (RFC 6749 §10.12), ``nonce`` bound to the ID token against replay
  (OpenID Connect Core §3.1.2.1, §15.5.2), PKCE with S256 against stolen
  codes (RFC 7636 §4); the three live in the server-side session only, and
  are used once;
* the token endpoint reached with client_secret_basic (RFC 6749 §2.3.1);
* the ID token verified as OpenID Connect Core §3.1.3.7 says: signature
  (RS256 or ES256 only, with a key of the provider's JWKS), ``iss``, ``aud``
  / ``azp``, ``exp`` and ``iat`` with a small leeway, ``nonce``, and
  ``at_hash`` when present (§3.1.3.8).

The national identifier (8 + RPPS) comes from the configured claims of the
ID token, or of the UserInfo response when the ID token does not carry it
(Pro Santé Connect gives ``SubjectNameID`` there). It maps to a directory
entry and that entry's account; no account is ever created here (enrolment
stays with the activation code). Nothing of the tokens is stored or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse
from django.utils.translation import gettext as _

from pli.identifiers import IdentifierError, parse_national_id
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import User

if TYPE_CHECKING:
    import jwt

logger = logging.getLogger(__name__)

#: Where the flow's secrets wait for the provider's answer (Django's server-side session).
SESSION_KEY = "pli_oidc"
#: How long the browser may stay at the provider.
FLOW_SECONDS = 600
#: Every call to the provider gives up after this long (the user is waiting).
HTTP_TIMEOUT = 5.0
#: Larger answers from the provider are refused.
MAX_RESPONSE_BYTES = 256 * 1024
#: The discovery document is fetched again after this long.
DISCOVERY_SECONDS = 3600
#: Only asymmetric signatures: never "none", never HS256 (whose key would be the secret).
ALGORITHMS = ("RS256", "ES256")
#: Clock difference tolerated between the provider and Pli (exp, iat).
LEEWAY_SECONDS = 60
#: An ID token issued longer ago than this is refused (OpenID Connect Core §3.1.3.7, 10).
MAX_TOKEN_AGE_SECONDS = FLOW_SECONDS


class OidcError(AccountError):
    """A refused OpenID Connect login: a stable code, a translated message, what to audit."""

    def __init__(self, code: str, message: str, *, user: User | None = None) -> None:
        super().__init__(code, message)
        self.user = user


def _unavailable() -> OidcError:
    return OidcError(
        "oidc_unavailable",
        _("Le fournisseur d'identité ne répond pas. Réessayez dans quelques minutes."),
    )


def _token_invalid() -> OidcError:
    return OidcError(
        "oidc_token_invalid",
        _("La réponse du fournisseur d'identité n'est pas valide : connexion refusée."),
    )


def _state_mismatch() -> OidcError:
    return OidcError(
        "oidc_state_mismatch",
        _(
            "Cette connexion a expiré ou n'a pas été commencée dans ce navigateur :"
            " recommencez depuis la page de connexion."
        ),
    )


def oidc_enabled() -> bool:
    return bool(settings.PLI_OIDC_ISSUER)


def redirect_uri() -> str:
    """Registered at the provider: built from PLI_BASE_URL, never from the request's Host."""
    return settings.PLI_BASE_URL + reverse("accounts:oidc-callback")


# --- talking to the provider -------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The provider's endpoints answer directly; a redirect is not followed anywhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect())


def _check_url(url: object) -> str:
    """An endpoint of the provider: https, or http on loopback like the issuer may be."""
    if not isinstance(url, str):
        raise _unavailable()
    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback):
        return url
    raise _unavailable()


def _call(
    url: str, *, headers: dict[str, str], data: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    """Status and JSON object of one call; OidcError(oidc_unavailable) when it cannot be had."""
    request = urllib.request.Request(  # noqa: S310 - _check_url lets http(s) only through
        _check_url(url), data=data, headers={"Accept": "application/json", **headers}
    )
    try:
        with _opener.open(request, timeout=HTTP_TIMEOUT) as response:
            status, body = response.status, response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as error:
        # 4xx answers of the token endpoint carry an OAuth error object (RFC 6749 §5.2).
        status, body = error.code, error.read(MAX_RESPONSE_BYTES + 1)
    except (OSError, ValueError) as error:
        # The URL is an endpoint of the provider: no token, no code in it.
        logger.warning("OpenID Connect provider unreachable: %s: %s", request.full_url, error)
        raise _unavailable() from None
    if len(body) > MAX_RESPONSE_BYTES:
        logger.warning("OpenID Connect provider answer too large: %s", request.full_url)
        raise _unavailable()
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        if status >= 500 or status < 400:
            raise _unavailable()
        document = {}
    return status, document


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None


_lock = threading.Lock()
_discovery: dict[str, tuple[float, ProviderMetadata]] = {}
_jwks: dict[str, jwt.PyJWKClient] = {}


def reset_caches() -> None:
    """Forget the discovery documents and key sets (tests, configuration reloads)."""
    with _lock:
        _discovery.clear()
        _jwks.clear()


def provider_metadata() -> ProviderMetadata:
    """The provider's discovery document (OpenID Connect Discovery 1.0 §4), cached."""
    issuer = settings.PLI_OIDC_ISSUER
    now = time.monotonic()
    with _lock:
        cached = _discovery.get(issuer)
    if cached is not None and now - cached[0] < DISCOVERY_SECONDS:
        return cached[1]
    # Discovery §4: a terminating "/" of the issuer is removed before appending.
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    status, document = _call(url, headers={})
    # Discovery §4.3: the issuer of the document must be exactly the configured one.
    if status != 200 or document.get("issuer") != issuer:
        raise _unavailable()
    userinfo = document.get("userinfo_endpoint")
    metadata = ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=_check_url(document.get("authorization_endpoint")),
        token_endpoint=_check_url(document.get("token_endpoint")),
        jwks_uri=_check_url(document.get("jwks_uri")),
        userinfo_endpoint=_check_url(userinfo) if userinfo else None,
    )
    with _lock:
        _discovery[issuer] = (now, metadata)
    return metadata


def _jwks_client(uri: str) -> jwt.PyJWKClient:
    import jwt  # noqa: PLC0415 - PyJWT only once OpenID Connect is used

    with _lock:
        client = _jwks.get(uri)
        if client is None:
            # The key set is cached for 5 minutes; an unknown key id fetches it again
            # (key rotation), at most every 30 seconds.
            client = jwt.PyJWKClient(uri, timeout=HTTP_TIMEOUT, lifespan=300)
            _jwks[uri] = client
        return client


# --- the flow ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def begin_authentication(request: HttpRequest) -> str:
    """Remember state, nonce and PKCE verifier in the session; the provider's URL to go to."""
    metadata = provider_metadata()
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    # RFC 7636 §4.1: 43 to 128 characters of the unreserved set; 64 random bytes give 86.
    verifier = secrets.token_urlsafe(64)
    request.session[SESSION_KEY] = {
        "state": state,
        "nonce": nonce,
        "verifier": verifier,
        "at": int(time.time()),
    }
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": settings.PLI_OIDC_CLIENT_ID,
            "redirect_uri": redirect_uri(),
            "scope": settings.PLI_OIDC_SCOPES,
            "state": state,
            "nonce": nonce,
            # RFC 7636 §4.2: S256, never plain.
            "code_challenge": _b64url(hashlib.sha256(verifier.encode("ascii")).digest()),
            "code_challenge_method": "S256",
        }
    )
    separator = "&" if "?" in metadata.authorization_endpoint else "?"
    return metadata.authorization_endpoint + separator + query


def _take_flow(request: HttpRequest) -> dict[str, Any]:
    """The flow's secrets, removed from the session: a callback is accepted once."""
    flow = request.session.pop(SESSION_KEY, None)
    if not isinstance(flow, dict) or time.time() - float(flow.get("at", 0)) > FLOW_SECONDS:
        raise _state_mismatch()
    return flow


def _exchange_code(metadata: ProviderMetadata, code: str, verifier: str) -> dict[str, Any]:
    """The token request of RFC 6749 §4.1.3, authenticated with client_secret_basic."""
    # RFC 6749 §2.3.1: the id and secret are form-encoded before being joined.
    credentials = ":".join(
        urllib.parse.quote_plus(part)
        for part in (settings.PLI_OIDC_CLIENT_ID, settings.PLI_OIDC_CLIENT_SECRET)
    )
    body = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri(),
            "code_verifier": verifier,
        }
    ).encode("ascii")
    status, document = _call(
        metadata.token_endpoint,
        data=body,
        headers={
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    if status >= 500:
        raise _unavailable()
    if status != 200:
        # RFC 6749 §5.2: the error code says why (invalid_grant, invalid_client...).
        logger.warning(
            "OpenID Connect token request refused: HTTP %d %s",
            status,
            str(document.get("error", ""))[:64],
        )
        raise OidcError(
            "oidc_code_rejected",
            _("Le fournisseur d'identité a refusé la connexion : recommencez."),
        )
    if not isinstance(document.get("id_token"), str):
        raise _token_invalid()
    return document


def _verify_id_token(
    metadata: ProviderMetadata, id_token: str, nonce: str, access_token: str | None
) -> dict[str, Any]:
    """OpenID Connect Core §3.1.3.7: every check, or OidcError(oidc_token_invalid)."""
    import jwt  # noqa: PLC0415 - PyJWT (3.8 MB) only for a server that uses OpenID Connect

    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise _token_invalid() from None
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise _token_invalid()
    try:
        signing_key = _jwks_client(metadata.jwks_uri).get_signing_key_from_jwt(id_token)
    except jwt.PyJWKClientConnectionError:
        raise _unavailable() from None
    except jwt.PyJWTError:
        raise _token_invalid() from None
    # The key must be of the header's algorithm (an RSA key for RS256, P-256 for ES256).
    if signing_key.algorithm_name != algorithm:
        raise _token_invalid()
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            signing_key.key,
            algorithms=[algorithm],
            audience=settings.PLI_OIDC_CLIENT_ID,
            issuer=metadata.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError:
        raise _token_invalid() from None
    # §3.1.3.7, 4 and 5: several audiences need an azp, which must be us.
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if ("azp" in claims or len(audiences) > 1) and claims.get("azp") != settings.PLI_OIDC_CLIENT_ID:
        raise _token_invalid()
    # §3.1.3.7, 10: not issued too long ago (exp alone may be far away).
    issued_at = claims["iat"]
    if not isinstance(issued_at, int | float) or (
        time.time() - issued_at > MAX_TOKEN_AGE_SECONDS + LEEWAY_SECONDS
    ):
        raise _token_invalid()
    # §3.1.3.7, 11: the nonce of this browser's flow.
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce, nonce):
        raise _token_invalid()
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise _token_invalid()
    # §3.1.3.8: at_hash is optional in the code flow; when given, it must match.
    at_hash = claims.get("at_hash")
    if at_hash is not None:
        if not access_token:
            raise _token_invalid()
        digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
        if not isinstance(at_hash, str) or not hmac.compare_digest(
            at_hash, _b64url(digest[: len(digest) // 2])
        ):
            raise _token_invalid()
    return claims


def _userinfo(metadata: ProviderMetadata, access_token: str, subject: str) -> dict[str, Any]:
    """The UserInfo response (OpenID Connect Core §5.3), for the same subject only."""
    if metadata.userinfo_endpoint is None:
        return {}
    status, document = _call(
        metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
    )
    if status >= 500:
        raise _unavailable()
    # §5.3.2: the sub of the UserInfo response must be the ID token's, else it is not used.
    if status != 200 or document.get("sub") != subject:
        raise _token_invalid()
    return document


def _national_id(
    metadata: ProviderMetadata, claims: dict[str, Any], access_token: str | None
) -> str:
    """The first configured claim that carries an identifier, from the ID token or UserInfo."""
    wanted: list[str] = settings.PLI_OIDC_ID_CLAIMS
    found = dict(claims)
    if wanted[0] not in found and access_token:
        # The ID token's own values win over the UserInfo response's.
        found = {**_userinfo(metadata, access_token, claims["sub"]), **claims}
    for name in wanted:
        value = found.get(name)
        if isinstance(value, str) and value.strip():
            try:
                return parse_national_id(value).national_id or value.strip()
            except IdentifierError:
                return value.strip()
    raise OidcError(
        "oidc_no_identifier",
        _("Le fournisseur d'identité n'a pas transmis d'identifiant professionnel national."),
    )


def account_for_national_id(national_id: str) -> User:
    """The account of the directory entry with this national identifier, if it may log in."""
    user = (
        User.objects.select_related("professional")
        .filter(professional__national_id=national_id)
        .first()
    )
    if user is None:
        raise OidcError(
            "oidc_unknown_professional",
            _(
                "Aucun compte Pli n'est associé à cette identité professionnelle."
                " Demandez d'abord un code d'activation depuis la page de connexion."
            ),
        )
    if not user.is_active or (user.professional is not None and not user.professional.active):
        raise OidcError("account_inactive", _("Ce compte est désactivé."), user=user)
    if user.enrolled_at is None:
        raise OidcError(
            "enrolment_incomplete",
            _("Terminez d'abord votre inscription avec votre code d'activation."),
            user=user,
        )
    return user


def finish_authentication(request: HttpRequest) -> User:
    """Check the provider's answer (the callback's query) and find the account it names."""
    flow = _take_flow(request)
    params = request.GET
    state = params.get("state", "")
    if not hmac.compare_digest(state.encode(), str(flow.get("state", "")).encode()):
        raise _state_mismatch()
    metadata = provider_metadata()
    # RFC 9207: when the provider names itself in the answer, it must be ours (mix-up).
    if "iss" in params and params["iss"] != metadata.issuer:
        raise _token_invalid()
    if "error" in params:
        # RFC 6749 §4.1.2.1: the user cancelled, or the provider refused.
        raise OidcError(
            "oidc_refused",
            _("La connexion a été annulée ou refusée par le fournisseur d'identité."),
        )
    code = params.get("code", "")
    if not code:
        raise _token_invalid()
    tokens = _exchange_code(metadata, code, str(flow.get("verifier", "")))
    access_token = tokens.get("access_token")
    if not isinstance(access_token, str):
        access_token = None
    claims = _verify_id_token(metadata, tokens["id_token"], str(flow["nonce"]), access_token)
    return account_for_national_id(_national_id(metadata, claims, access_token))

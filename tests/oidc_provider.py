"""A real, local OpenID Connect provider for the tests (the remote identity provider's stand-in).

It listens on 127.0.0.1 (a free port) in a thread and speaks HTTP like Pro
Santé Connect would: discovery, JWKS, /authorize (approves the configured
subject at once and sends the browser back with code and state), /token
(checks client_secret_basic, the code, the redirect URI and the PKCE
verifier, RFC 7636 §4.6, then returns an ID token signed with pyjwt) and
/userinfo. Misbehaviours are switched on per test to prove Pli refuses them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from pli.crypto import generate_private_key

CLIENT_ID = "pli-test-client"
CLIENT_SECRET = "pli-test-client-secret-0123456789"


class Misbehaviour(StrEnum):
    NONE = "none"
    WRONG_NONCE = "wrong_nonce"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    EXPIRED = "expired"
    #: Signed by a key that is not the published one, under the published key id.
    BAD_SIGNATURE = "bad_signature"
    #: HS256 with the public key as the shared secret (the classic algorithm confusion).
    HS256_CONFUSION = "hs256_confusion"
    UNSIGNED = "unsigned"
    #: The authorization endpoint answers with error=access_denied.
    ACCESS_DENIED = "access_denied"
    #: A wrong at_hash for the access token.
    WRONG_AT_HASH = "wrong_at_hash"
    #: The national identifier only in the UserInfo response, as Pro Santé Connect does.
    IDENTIFIER_IN_USERINFO = "identifier_in_userinfo"
    #: The UserInfo response is about somebody else.
    USERINFO_OTHER_SUBJECT = "userinfo_other_subject"
    #: Sign with the P-256 key (ES256) instead of RSA.
    ES256 = "es256"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    method: str
    claims: dict[str, Any]


@dataclass
class LocalOidcProvider:
    """Holds the keys, the approved subject and what the provider saw."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    #: The claims of the person who "logs in" at the provider.
    subject: dict[str, Any] = field(default_factory=dict)
    misbehaviour: Misbehaviour = Misbehaviour.NONE
    #: Refusals of the token endpoint, as reasons (client, code, redirect_uri, pkce).
    token_refusals: list[str] = field(default_factory=list)
    token_requests: int = 0
    userinfo_requests: int = 0
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _access_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/realms/sante"

    def reset(self, subject: dict[str, Any], misbehaviour: Misbehaviour) -> None:
        self.subject = subject
        self.misbehaviour = misbehaviour
        self.token_refusals.clear()
        self.token_requests = 0
        self.userinfo_requests = 0

    # --- the endpoints --------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/protocol/openid-connect/auth",
            "token_endpoint": f"{base}/protocol/openid-connect/token",
            "userinfo_endpoint": f"{base}/protocol/openid-connect/userinfo",
            "jwks_uri": f"{base}/protocol/openid-connect/certs",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec_key.public_key()))
        rsa_jwk.update({"kid": "rsa-1", "use": "sig", "alg": "RS256"})
        ec_jwk.update({"kid": "ec-1", "use": "sig", "alg": "ES256"})
        return {"keys": [rsa_jwk, ec_jwk]}

    def authorize(self, query: dict[str, str]) -> str:
        """Where the browser goes next: back to the client with a code (or an error)."""
        redirect_uri = query["redirect_uri"]
        if self.misbehaviour is Misbehaviour.ACCESS_DENIED:
            answer = {"error": "access_denied", "state": query.get("state", "")}
        else:
            code = secrets.token_urlsafe(24)
            self._grants[code] = _Grant(
                client_id=query.get("client_id", ""),
                redirect_uri=redirect_uri,
                nonce=query.get("nonce", ""),
                challenge=query.get("code_challenge", ""),
                method=query.get("code_challenge_method", ""),
                claims=dict(self.subject),
            )
            answer = {"code": code, "state": query.get("state", "")}
        return redirect_uri + "?" + urllib.parse.urlencode(answer)

    def token(self, authorization: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        expected = base64.b64encode(
            f"{urllib.parse.quote_plus(self.client_id)}:"
            f"{urllib.parse.quote_plus(self.client_secret)}".encode()
        ).decode()
        if authorization != f"Basic {expected}":
            self.token_refusals.append("client")
            return 401, {"error": "invalid_client"}
        grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            self.token_refusals.append("code")
            return 400, {"error": "invalid_grant"}
        if grant.redirect_uri != form.get("redirect_uri") or grant.client_id != self.client_id:
            self.token_refusals.append("redirect_uri")
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        computed = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if grant.method != "S256" or computed != grant.challenge or not 43 <= len(verifier) <= 128:
            self.token_refusals.append("pkce")
            return 400, {"error": "invalid_grant"}
        access_token = secrets.token_urlsafe(32)
        self._access_tokens[access_token] = grant.claims
        return 200, {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 120,
            "id_token": self._id_token(grant, access_token),
        }

    def userinfo(self, authorization: str) -> tuple[int, dict[str, Any]]:
        self.userinfo_requests += 1
        claims = self._access_tokens.get(authorization.removeprefix("Bearer "))
        if claims is None:
            return 401, {"error": "invalid_token"}
        answer = dict(claims)
        if self.misbehaviour is Misbehaviour.USERINFO_OTHER_SUBJECT:
            answer["sub"] = "somebody-else"
        return 200, answer

    def _id_token(self, grant: _Grant, access_token: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 120,
            "auth_time": now,
            "nonce": grant.nonce,
            "acr": "eidas1",
            **grant.claims,
        }
        digest = hashlib.sha256(access_token.encode()).digest()[:16]
        claims["at_hash"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        behaviour = self.misbehaviour
        if behaviour in (Misbehaviour.IDENTIFIER_IN_USERINFO, Misbehaviour.USERINFO_OTHER_SUBJECT):
            claims.pop("SubjectNameID", None)
            claims.pop("preferred_username", None)
        if behaviour is Misbehaviour.WRONG_NONCE:
            claims["nonce"] = "not-the-nonce"
        elif behaviour is Misbehaviour.WRONG_AUDIENCE:
            claims["aud"] = "another-client"
        elif behaviour is Misbehaviour.WRONG_ISSUER:
            claims["iss"] = "https://elsewhere.example/realms/sante"
        elif behaviour is Misbehaviour.EXPIRED:
            claims["iat"], claims["exp"] = now - 3600, now - 1800
        elif behaviour is Misbehaviour.WRONG_AT_HASH:
            claims["at_hash"] = "AAAAAAAAAAAAAAAAAAAAAA"
        if behaviour is Misbehaviour.BAD_SIGNATURE:
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return jwt.encode(claims, other, algorithm="RS256", headers={"kid": "rsa-1"})
        if behaviour is Misbehaviour.HS256_CONFUSION:
            return _hs256_with_public_key(claims, self.rsa_key)
        if behaviour is Misbehaviour.UNSIGNED:
            return _unsigned(claims)
        if behaviour is Misbehaviour.ES256:
            return jwt.encode(claims, self.ec_key, algorithm="ES256", headers={"kid": "ec-1"})
        return jwt.encode(claims, self.rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})

    # --- serving ---------------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[LocalOidcProvider]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

            def _json(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                path = url.path.removeprefix("/realms/sante")
                if path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif path == "/protocol/openid-connect/certs":
                    self._json(200, provider.jwks())
                elif path == "/protocol/openid-connect/auth":
                    query = dict(urllib.parse.parse_qsl(url.query))
                    self.send_response(302)
                    self.send_header("Location", provider.authorize(query))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/protocol/openid-connect/userinfo":
                    self._json(*provider.userinfo(self.headers.get("Authorization", "")))
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path.removeprefix("/realms/sante") == "/protocol/openid-connect/token":
                    self._json(*provider.token(self.headers.get("Authorization", ""), form))
                else:
                    self._json(404, {"error": "not_found"})

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="oidc-provider", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    """What an attacker forges when a verifier lets the token choose HS256 (pyjwt refuses
    PEM keys as HMAC secrets, so the token is put together by hand)."""
    secret = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _unsigned(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def new_provider() -> LocalOidcProvider:
    """Keys made with the project's own helper (RSA-3072) and a P-256 key for ES256."""
    return LocalOidcProvider(
        rsa_key=generate_private_key(), ec_key=ec.generate_private_key(ec.SECP256R1())
    )


def national_subject(national_id: str) -> dict[str, Any]:
    """The claims of a professional as Pro Santé Connect gives them (8 + RPPS)."""
    return {
        "sub": "f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:" + national_id,
        "SubjectNameID": national_id,
        "preferred_username": national_id,
        "family_name": "MARTIN",
        "given_name": "Alice",
    }

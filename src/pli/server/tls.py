"""Pli's own TLS termination in `pli serve`: gunicorn's TLS options and the client certificate.

REQ-AUTH-CARD without a reverse proxy: gunicorn terminates TLS, asks for a
client certificate (optional: the passphrase login stays reachable without
a card) and verifies its path against ``PLI_CLIENT_CA_FILE`` during the
handshake, which also proves that the client holds the private key (the
CertificateVerify message, RFC 8446 §4.4.3). gunicorn puts the connection's
socket in the WSGI environ as ``gunicorn.socket``; :class:`PeerCertificateMiddleware`
copies the peer certificate (DER) from it into :data:`PEER_CERTIFICATE`, a
key no HTTP header can produce (headers arrive as ``HTTP_*``). Pli then
verifies that certificate again (usage, revocation, account):
pli.server.accounts.certificate_login.

No Django here: this wraps the WSGI application from the outside.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

from pli.server.config import ConfigurationError, setting

#: The WSGI environ key holding the DER client certificate of the TLS connection.
PEER_CERTIFICATE = "pli.tls_client_certificate"

WsgiApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def gunicorn_tls_options() -> dict[str, object]:
    """gunicorn settings for TLS from PLI_TLS_CERT_FILE / PLI_TLS_KEY_FILE; {} for plain HTTP.

    With PLI_CLIENT_CA_FILE as well, client certificates are requested and
    their path verified during the handshake (``cert_reqs`` CERT_OPTIONAL).
    """
    certificate = setting("TLS_CERT_FILE")
    key = setting("TLS_KEY_FILE")
    if not certificate and not key:
        return {}
    if not certificate or not key:
        raise ConfigurationError("set both PLI_TLS_CERT_FILE and PLI_TLS_KEY_FILE, or neither")
    options: dict[str, object] = {"certfile": certificate, "keyfile": key}
    client_ca = setting("CLIENT_CA_FILE")
    if client_ca:
        options["ca_certs"] = client_ca
        options["cert_reqs"] = ssl.CERT_OPTIONAL
    return options


class PeerCertificateMiddleware:
    """Puts the TLS client certificate of gunicorn's connection into the WSGI environ."""

    def __init__(self, application: WsgiApplication) -> None:
        self.application = application

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ.pop(PEER_CERTIFICATE, None)
        sock = environ.get("gunicorn.socket")
        if isinstance(sock, ssl.SSLSocket):
            try:
                der = sock.getpeercert(binary_form=True)
            except (OSError, ValueError):  # the connection is gone, or not yet handshaken
                der = None
            if der:
                environ[PEER_CERTIFICATE] = der
        return self.application(environ, start_response)

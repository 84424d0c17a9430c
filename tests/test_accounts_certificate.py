"""Login with a professional certificate (REQ-AUTH-CARD): Pli's own checks, both transports.

A test "IGC-Santé" issues card certificates (clientAuth, digitalSignature,
the national identifier 8 + RPPS as the subject's serialNumber), one of them
revoked by a real CRL; another authority nobody trusts issues look-alikes.
The certificate reaches Pli as a trusted reverse proxy's header (nginx's
``$ssl_client_escaped_cert``) or from Pli's own TLS server (the WSGI environ,
filled by pli.server.tls from a real gunicorn TLS connection below).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import ipaddress
import json
import os
import re
import runpy
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.test import Client
from pytest_django.fixtures import Settings

from pli.crypto import (
    Certificate,
    ClientCertificateExpired,
    ClientCertificateRevocationUnknown,
    ClientCertificateRevoked,
    ClientCertificateTrust,
    ClientCertificateUntrusted,
    ClientCertificateUsageInvalid,
    Revocation,
    build_crl,
    certificate_der,
    certificate_fingerprint,
    certificate_pem,
    crl_pem,
)
from pli.server.accounts.certificate_login import is_trusted_proxy
from pli.server.accounts.models import ClientCertificate, User, UserSession
from pli.server.audit.models import AuditEvent
from pli.server.config import ConfigurationError
from pli.server.tls import PEER_CERTIFICATE, gunicorn_tls_options
from tests.accounts_support import make_account
from tests.pki import Authority, make_authority

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

CERTIFICATE_LOGIN = "/compte/connexion/certificat/"
LOGIN = "/compte/connexion/"
HEADER = "X-SSL-Client-Cert"
HEADER_META = "HTTP_X_SSL_CLIENT_CERT"
BUTTON = "Se connecter avec la carte CPS / un certificat"
SETTINGS_FILE = Path(__file__).resolve().parents[1] / "src/pli/server/settings.py"
UTC = dt.UTC
ClientKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# --- a test PKI of professional cards (shared with the browser test) ------------------------------


def issue_card(
    authority: Authority,
    key: ClientKey,
    *,
    national_id: str | None,
    name: str = "Alice Martin",
    client_auth: bool = True,
    digital_signature: bool = True,
    not_before: dt.datetime | None = None,
    days: int = 365,
) -> Certificate:
    """A card authentication certificate, as IGC-Santé issues them for CPS cards."""
    start = not_before or dt.datetime.now(UTC) - dt.timedelta(minutes=5)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if national_id:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, national_id))
    usage = [
        ExtendedKeyUsageOID.CLIENT_AUTH if client_auth else ExtendedKeyUsageOID.EMAIL_PROTECTION
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=not digital_signature,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )


def issue_server(authority: Authority, key: rsa.RSAPrivateKey, address: str) -> Certificate:
    """A TLS server certificate for an IP address (the TLS front of the tests)."""
    now = dt.datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )


def key_pem(key: ClientKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class CardPki:
    igc: Authority
    foreign: Authority
    key: rsa.RSAPrivateKey
    #: Issued by the trusted authority and listed in its CRL.
    revoked: Certificate
    crl: x509.CertificateRevocationList

    def card(self, national_id: str | None, **options: Any) -> Certificate:
        return issue_card(self.igc, self.key, national_id=national_id, **options)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """The anchors bundle and the CRL file, as an operator installs them."""
        anchors = directory / "client-ca.pem"
        anchors.write_bytes(certificate_pem(self.igc.certificate))
        crl = directory / "client-ca.crl.pem"
        crl.write_bytes(crl_pem(self.crl))
        return anchors, crl


def make_card_pki() -> CardPki:
    igc = make_authority("IGC-Santé de test")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    revoked = issue_card(igc, key, national_id="810100000016")
    crl = build_crl(
        igc.key,
        igc.certificate,
        [Revocation(revoked.serial_number, dt.datetime.now(UTC), "key_compromise")],
        number=1,
    )
    return CardPki(
        igc=igc,
        foreign=make_authority("Autorité inconnue"),
        key=key,
        revoked=revoked,
        crl=crl,
    )


def escaped(certificate: Certificate) -> str:
    """What nginx puts in $ssl_client_escaped_cert: the PEM, URL-encoded."""
    return urllib.parse.quote(certificate_pem(certificate).decode(), safe="")


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cards() -> CardPki:
    return make_card_pki()


@pytest.fixture
def configured(cards: CardPki, settings: Settings, tmp_path: Path) -> CardPki:
    anchors, crl = cards.write(tmp_path)
    settings.PLI_CLIENT_CA_FILE = str(anchors)
    settings.PLI_CLIENT_CRL_FILES = [str(crl)]
    settings.PLI_TLS_CLIENT_CERT_HEADER = HEADER
    settings.PLI_TRUSTED_PROXIES = ["127.0.0.1", "::1"]
    return cards


def _error_code(response: Response) -> str | None:
    match = re.search(r'data-code="([a-z0-9_]+)"', response.content.decode())
    return match.group(1) if match else None


def _signed_in_as(client: Client) -> str | None:
    response = client.get("/api/accounts/me")
    return response.json()["username"] if response.status_code == 200 else None


def _through_proxy(client: Client, certificate: Certificate, **extra: Any) -> Response:
    headers: dict[str, Any] = {HEADER_META: escaped(certificate), **extra}
    return client.post(CERTIFICATE_LOGIN, **headers)


def _last_failure() -> tuple[AuditEvent, dict[str, Any]]:
    event = AuditEvent.objects.filter(action="auth.login_failed").order_by("-seq").first()
    assert event is not None
    return event, json.loads(event.detail)


# --- logging in -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_card_passed_by_the_trusted_proxy_logs_its_holder_in(configured: CardPki) -> None:
    user, _ = make_account("alice.card@hopital.pli.test")
    assert user.professional is not None
    card = configured.card(user.professional.national_id)
    client = Client()
    response = _through_proxy(client, card)
    assert response.status_code == 302 and response["Location"] == "/messagerie/"
    assert _signed_in_as(client) == "alice.card@hopital.pli.test"
    # The card alone is strong authentication: no second factor was asked.
    assert UserSession.objects.get(user=user).method == "certificate"
    login = AuditEvent.objects.filter(action="auth.login").order_by("-seq").first()
    assert login is not None and json.loads(login.detail) == {"method": "certificate"}


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_card_from_plis_own_tls_server_logs_its_holder_in(
    configured: CardPki, settings: Settings
) -> None:
    # No proxy at all: only the TLS connection's certificate counts.
    settings.PLI_TLS_CLIENT_CERT_HEADER = ""
    settings.PLI_TRUSTED_PROXIES = []
    user, _ = make_account("bob.card@hopital.pli.test")
    assert user.professional is not None
    card = configured.card(user.professional.national_id)
    client = Client()
    environ: dict[str, Any] = {PEER_CERTIFICATE: certificate_der(card)}
    response = client.post(CERTIFICATE_LOGIN, **environ)
    assert response.status_code == 302
    assert _signed_in_as(client) == "bob.card@hopital.pli.test"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_registered_certificate_logs_in_without_a_national_identifier(
    configured: CardPki,
) -> None:
    user, _ = make_account("carol.card@hopital.pli.test")
    card = configured.card(None, name="Carol Soft Token")
    ClientCertificate.objects.create(
        user=user, fingerprint=certificate_fingerprint(card), subject="CN=Carol Soft Token"
    )
    client = Client()
    assert _through_proxy(client, card).status_code == 302
    assert _signed_in_as(client) == "carol.card@hopital.pli.test"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("revoked", "certificate_revoked"),
        ("foreign", "certificate_untrusted"),
        ("expired", "certificate_expired"),
        ("not_yet_valid", "certificate_expired"),
        ("email_only", "certificate_usage_invalid"),
        ("no_digital_signature", "certificate_usage_invalid"),
        ("nobody", "certificate_unknown_professional"),
    ],
)
def test_a_certificate_that_fails_a_check_is_refused(
    configured: CardPki, case: str, code: str
) -> None:
    user, _ = make_account(f"{case.replace('_', '.')}@hopital.pli.test")
    assert user.professional is not None
    national_id = user.professional.national_id
    now = dt.datetime.now(UTC)
    certificate = {
        "revoked": lambda: configured.revoked,
        "foreign": lambda: issue_card(configured.foreign, configured.key, national_id=national_id),
        "expired": lambda: configured.card(
            national_id, not_before=now - dt.timedelta(days=400), days=30
        ),
        "not_yet_valid": lambda: configured.card(
            national_id, not_before=now + dt.timedelta(days=2)
        ),
        "email_only": lambda: configured.card(national_id, client_auth=False),
        "no_digital_signature": lambda: configured.card(national_id, digital_signature=False),
        "nobody": lambda: configured.card("810000000002"),
    }[case]()
    client = Client()
    response = _through_proxy(client, certificate)
    assert response.status_code == 403
    assert _error_code(response) == code
    assert BUTTON in response.content.decode()  # back on the login page, which says why
    assert _signed_in_as(client) is None
    event, detail = _last_failure()
    assert event.outcome == "failure"
    assert detail == {
        "factor": "certificate",
        "reason": code,
        "certificate": certificate_fingerprint(certificate),
    }


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_the_revoked_card_message_is_translated(configured: CardPki) -> None:
    french = _through_proxy(Client(), configured.revoked).content.decode()
    assert "Ce certificat a été révoqué" in french
    english = _through_proxy(
        Client(), configured.revoked, HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()
    assert 'lang="en"' in english


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_inactive_and_unfinished_accounts_are_refused(configured: CardPki) -> None:
    user, _ = make_account("dan.inactive@hopital.pli.test")
    assert user.professional is not None
    card = configured.card(user.professional.national_id)
    User.objects.filter(pk=user.pk).update(is_active=False)
    response = _through_proxy(Client(), card)
    assert _error_code(response) == "account_inactive"
    assert _last_failure()[0].target == f"user:{user.pk}"
    User.objects.filter(pk=user.pk).update(is_active=True, enrolled_at=None)
    assert _error_code(_through_proxy(Client(), card)) == "enrolment_incomplete"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_header_from_an_untrusted_address_is_ignored_and_audited(configured: CardPki) -> None:
    user, _ = make_account("eve.spoof@hopital.pli.test")
    assert user.professional is not None
    card = configured.card(user.professional.national_id)
    client = Client()
    # Straight to Pli, around the proxy: the header is the attacker's own writing.
    response = _through_proxy(client, card, REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 403
    assert _error_code(response) == "certificate_missing"
    assert _signed_in_as(client) is None
    denied = AuditEvent.objects.get(action="auth.login_failed", outcome="denied")
    assert json.loads(denied.detail) == {"factor": "certificate", "reason": "untrusted_proxy"}
    assert denied.source_address == "203.0.113.7"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_no_certificate_and_garbage_are_refused_clearly(configured: CardPki) -> None:
    client = Client()
    response = client.post(CERTIFICATE_LOGIN)
    assert response.status_code == 403 and _error_code(response) == "certificate_missing"
    for garbage in ("-----BEGIN%20CERTIFICATE-----", "x" * 20000):
        headers: dict[str, Any] = {HEADER_META: garbage}
        response = client.post(CERTIFICATE_LOGIN, **headers)
        assert _error_code(response) == "certificate_invalid"
    # The button posts; a GET (a link, a prefetch) logs nobody in.
    response = client.get(CERTIFICATE_LOGIN)
    assert response.status_code == 302 and response["Location"] == LOGIN


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_new_crl_on_disk_is_used_at_once(configured: CardPki, settings: Settings) -> None:
    user, _ = make_account("frank.crl@hopital.pli.test")
    assert user.professional is not None
    card = configured.card(user.professional.national_id)
    assert _through_proxy(Client(), card).status_code == 302
    # The authority publishes its next CRL, which lists the card.
    newer = build_crl(
        configured.igc.key,
        configured.igc.certificate,
        [
            Revocation(configured.revoked.serial_number, dt.datetime.now(UTC), "key_compromise"),
            Revocation(card.serial_number, dt.datetime.now(UTC), "key_compromise"),
        ],
        number=2,
    )
    crl_file = Path(settings.PLI_CLIENT_CRL_FILES[0])
    crl_file.write_bytes(crl_pem(newer))
    os.utime(crl_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert _error_code(_through_proxy(Client(), card)) == "certificate_revoked"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_stale_crl_refuses_every_card(configured: CardPki, settings: Settings) -> None:
    user, _ = make_account("grace.stale@hopital.pli.test")
    assert user.professional is not None
    stale = build_crl(
        configured.igc.key,
        configured.igc.certificate,
        [],
        number=3,
        days=1,
        now=dt.datetime.now(UTC) - dt.timedelta(days=3),
    )
    Path(settings.PLI_CLIENT_CRL_FILES[0]).write_bytes(crl_pem(stale))
    os.utime(settings.PLI_CLIENT_CRL_FILES[0], ns=(time.time_ns(), time.time_ns() + 2_000_000))
    response = _through_proxy(Client(), configured.card(user.professional.national_id))
    assert _error_code(response) == "certificate_revocation_unknown"


@pytest.mark.django_db
def test_an_unreadable_anchor_file_refuses_without_a_trace(
    configured: CardPki, settings: Settings, tmp_path: Path
) -> None:
    settings.PLI_CLIENT_CA_FILE = str(tmp_path / "missing.pem")
    response = _through_proxy(Client(), configured.revoked)
    assert response.status_code == 503
    assert _error_code(response) == "certificate_unavailable"
    assert "Traceback" not in response.content.decode()


@pytest.mark.django_db
def test_without_configuration_there_is_no_button_and_no_page(settings: Settings) -> None:
    settings.PLI_CLIENT_CA_FILE = ""
    settings.PLI_TLS_CLIENT_CERT_HEADER = ""
    client = Client()
    assert client.post(CERTIFICATE_LOGIN).status_code == 404
    assert BUTTON not in client.get(LOGIN).content.decode()


@pytest.mark.django_db
def test_the_login_page_offers_the_card(configured: CardPki) -> None:
    page = Client().get(LOGIN).content.decode()
    assert BUTTON in page
    assert f'action="{CERTIFICATE_LOGIN}"' in page


# --- pli.crypto.client_certificates ---------------------------------------------------------------


def _authority(
    name: str, key: rsa.RSAPrivateKey, issuer: Authority | None, path_length: int
) -> Authority:
    """A CA certificate; self-signed when *issuer* is None."""
    now = dt.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer.key if issuer else key
    return Authority(
        key,
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256()),
    )


def test_elliptic_curve_cards_and_intermediate_authorities_are_verified() -> None:
    # A root and an intermediate authority with their own CRLs (IGC-Santé's layout).
    now = dt.datetime.now(UTC)
    root_key, intermediate_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)
    )
    root = _authority("AC Racine de test", root_key, None, 1)
    intermediate = _authority("AC Personnes de test", intermediate_key, root, 0)
    card_key = ec.generate_private_key(ec.SECP256R1())
    card = issue_card(intermediate, card_key, national_id="810100000016")
    root_crl = build_crl(root.key, root.certificate, [], number=1)
    intermediate_crl = build_crl(intermediate.key, intermediate.certificate, [], number=1)

    trust = ClientCertificateTrust([root.certificate], [root_crl, intermediate_crl])
    verified = trust.verify(card, [intermediate.certificate])
    assert verified.national_id == "810100000016" and verified.revocation_checked
    assert len(verified.chain) == 3
    # Without the intermediate's CRL, revocation cannot be checked: refused.
    with pytest.raises(ClientCertificateRevocationUnknown):
        ClientCertificateTrust([root.certificate], [root_crl]).verify(
            card, [intermediate.certificate]
        )
    # The intermediate revokes the card.
    revoking = build_crl(
        intermediate.key,
        intermediate.certificate,
        [Revocation(card.serial_number, now, "key_compromise")],
        number=2,
    )
    with pytest.raises(ClientCertificateRevoked):
        ClientCertificateTrust([root.certificate], [root_crl, revoking]).verify(
            card, [intermediate.certificate]
        )
    # Without the intermediate, no path.
    with pytest.raises(ClientCertificateUntrusted):
        trust.verify(card)


def test_a_crl_signed_by_another_key_does_not_count(cards: CardPki) -> None:
    forged = build_crl(cards.foreign.key, cards.igc.certificate, [], number=99)
    trust = ClientCertificateTrust([cards.igc.certificate], [forged])
    with pytest.raises(ClientCertificateRevocationUnknown):
        trust.verify(cards.card("810100000016"))
    # With no CRL configured at all, revocation is reported as not checked.
    verified = ClientCertificateTrust([cards.igc.certificate]).verify(cards.revoked)
    assert not verified.revocation_checked


def test_weak_keys_and_wrong_usages_are_refused(cards: CardPki) -> None:
    trust = ClientCertificateTrust([cards.igc.certificate])
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    with pytest.raises(ClientCertificateUsageInvalid):
        trust.verify(issue_card(cards.igc, weak, national_id=None))
    with pytest.raises(ClientCertificateUsageInvalid, match="clientAuth"):
        trust.verify(cards.card(None, client_auth=False))
    with pytest.raises(ClientCertificateExpired):
        trust.verify(cards.card(None), at=dt.datetime.now(UTC) + dt.timedelta(days=400))


# --- Pli's own TLS server: gunicorn puts the client certificate in the WSGI environ ---------------

_ECHO_SERVER = textwrap.dedent(
    """
    import hashlib, sys
    from gunicorn.app.base import BaseApplication
    from pli.server.tls import PEER_CERTIFICATE, PeerCertificateMiddleware, gunicorn_tls_options

    def echo(environ, start_response):
        der = environ.get(PEER_CERTIFICATE)
        body = (hashlib.sha256(der).hexdigest() if der else "none").encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    class Echo(BaseApplication):
        def load_config(self):
            # As `pli serve` does (pli.server.serve.run).
            self.cfg.set("bind", sys.argv[1])
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 2)
            for name, value in gunicorn_tls_options().items():
                self.cfg.set(name, value)

        def load(self):
            return PeerCertificateMiddleware(echo)

    Echo().run()
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def tls_server(cards: CardPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("tls-server")
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "server.pem").write_bytes(
        certificate_pem(issue_server(cards.igc, server_key, "127.0.0.1"))
    )
    (directory / "server.key").write_bytes(key_pem(server_key))
    anchors, _ = cards.write(directory)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
    env.update(
        {
            "PLI_TLS_CERT_FILE": str(directory / "server.pem"),
            "PLI_TLS_KEY_FILE": str(directory / "server.key"),
            "PLI_CLIENT_CA_FILE": str(anchors),
        }
    )
    log = (directory / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _ECHO_SERVER, f"127.0.0.1:{port}"],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail((directory / "gunicorn.log").read_text()[-3000:])
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _tls_get(
    address: str, authority: Certificate, card: tuple[Certificate, ClientKey] | None, tmp: Path
) -> str:
    context = ssl.create_default_context(cadata=certificate_pem(authority).decode())
    if card is not None:
        (tmp / "card.pem").write_bytes(certificate_pem(card[0]))
        (tmp / "card.key").write_bytes(key_pem(card[1]))
        context.load_cert_chain(tmp / "card.pem", tmp / "card.key")
    host, port = address.split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request("GET", "/", headers={HEADER: "forged"})
        return connection.getresponse().read().decode()
    finally:
        connection.close()


@pytest.mark.requirement("REQ-AUTH-CARD")
def test_gunicorn_passes_the_verified_client_certificate(
    cards: CardPki, tls_server: str, tmp_path: Path
) -> None:
    card = cards.card("810100000016")
    answer = _tls_get(tls_server, cards.igc.certificate, (card, cards.key), tmp_path)
    assert answer == hashlib.sha256(certificate_der(card)).hexdigest()
    # Optional: without a card the site still answers (the passphrase login).
    assert _tls_get(tls_server, cards.igc.certificate, None, tmp_path) == "none"
    # A card of an unknown authority fails the handshake itself.
    foreign = issue_card(cards.foreign, cards.key, national_id="810100000016")
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        _tls_get(tls_server, cards.igc.certificate, (foreign, cards.key), tmp_path)


def test_gunicorn_tls_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PLI_TLS_CERT_FILE", "PLI_TLS_KEY_FILE", "PLI_CLIENT_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert gunicorn_tls_options() == {}
    monkeypatch.setenv("PLI_TLS_CERT_FILE", "/etc/pli/tls.pem")
    with pytest.raises(ConfigurationError, match="PLI_TLS_KEY_FILE"):
        gunicorn_tls_options()
    monkeypatch.setenv("PLI_TLS_KEY_FILE", "/etc/pli/tls.key")
    assert gunicorn_tls_options() == {"certfile": "/etc/pli/tls.pem", "keyfile": "/etc/pli/tls.key"}
    monkeypatch.setenv("PLI_CLIENT_CA_FILE", "/etc/pli/cps-ca.pem")
    options = gunicorn_tls_options()
    assert options["ca_certs"] == "/etc/pli/cps-ca.pem"
    assert options["cert_reqs"] == ssl.CERT_OPTIONAL


# --- configuration ----------------------------------------------------------------------------


def _load_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in list(os.environ):
        if name.startswith(("PLI_OIDC_", "PLI_CLIENT_", "PLI_TLS_", "PLI_TRUSTED_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


def test_the_proxy_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _load_settings(
        monkeypatch,
        PLI_CLIENT_CA_FILE="/etc/pli/cps-ca.pem",
        PLI_CLIENT_CRL_FILES="/var/lib/pli/crl/a.crl, /var/lib/pli/crl/b.crl",
        PLI_TLS_CLIENT_CERT_HEADER="X-SSL-Client-Cert",
        PLI_TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/24",
    )
    assert loaded["PLI_CLIENT_CRL_FILES"] == ["/var/lib/pli/crl/a.crl", "/var/lib/pli/crl/b.crl"]
    assert loaded["PLI_TRUSTED_PROXIES"] == ["127.0.0.1", "10.0.0.0/24"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PLI_TLS_CLIENT_CERT_HEADER": "X-SSL-Client-Cert", "PLI_CLIENT_CA_FILE": "/ca.pem"},
            "PLI_TRUSTED_PROXIES",
        ),
        (
            {"PLI_TLS_CLIENT_CERT_HEADER": "X-SSL-Client-Cert", "PLI_TRUSTED_PROXIES": "::1"},
            "PLI_CLIENT_CA_FILE",
        ),
        (
            {
                "PLI_TLS_CLIENT_CERT_HEADER": "X-SSL-Client-Cert",
                "PLI_CLIENT_CA_FILE": "/ca.pem",
                "PLI_TRUSTED_PROXIES": "proxy.example",
            },
            "not an address",
        ),
        ({"PLI_CLIENT_CRL_FILES": "/a.crl"}, "PLI_CLIENT_CA_FILE"),
    ],
)
def test_a_contradictory_certificate_configuration_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _load_settings(monkeypatch, **env)


def test_only_the_listed_proxies_are_trusted(settings: Settings) -> None:
    settings.PLI_TRUSTED_PROXIES = ["127.0.0.1", "10.0.3.0/24"]
    trusted = ["127.0.0.1", "::ffff:127.0.0.1", "10.0.3.9"]
    untrusted = ["10.0.4.1", "::1", "203.0.113.7", "", "localhost", None]
    assert all(is_trusted_proxy(address) for address in trusted)
    assert not any(is_trusted_proxy(address) for address in untrusted)


# --- throttling -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_refused_cards_lock_the_client_address_behind_the_proxy(configured: CardPki) -> None:
    """Twenty refusals from one client lock that client, not everybody behind nginx."""
    user, _ = make_account("bob.card@hopital.pli.test")
    assert user.professional is not None
    card = configured.card(user.professional.national_id)
    scanner: dict[str, Any] = {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    garbage: dict[str, Any] = {HEADER_META: "garbage", **scanner}
    client = Client()
    for _attempt in range(20):
        response = client.post(CERTIFICATE_LOGIN, **garbage)
        assert _error_code(response) == "certificate_invalid"
    assert AuditEvent.objects.filter(action="auth.lockout").count() == 1

    # Now even a good card from that client waits, without a session.
    response = _through_proxy(client, card, **scanner)
    assert response.status_code == 403 and _error_code(response) == "locked"
    assert _signed_in_as(client) is None
    # The proxy's other clients are not locked out.
    other = Client()
    response = _through_proxy(other, card, HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert response.status_code == 302
    assert _signed_in_as(other) == "bob.card@hopital.pli.test"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_forwarded_address_is_believed_only_from_a_trusted_proxy(settings: Settings) -> None:
    from django.test import RequestFactory

    from pli.server.accounts.sessions import client_address

    settings.PLI_TRUSTED_PROXIES = ["10.0.3.0/24"]
    factory = RequestFactory()

    def seen(peer: str, forwarded: str | None) -> str | None:
        extra: dict[str, Any] = {"REMOTE_ADDR": peer}
        if forwarded is not None:
            extra["HTTP_X_FORWARDED_FOR"] = forwarded
        return client_address(factory.get("/", **extra))

    assert seen("10.0.3.4", "198.51.100.7") == "198.51.100.7"
    # The proxy's own entry is the last one; what the client wrote before it is not.
    assert seen("10.0.3.4", "203.0.113.9, 198.51.100.7") == "198.51.100.7"
    assert seen("10.0.3.4", "not-an-address") == "10.0.3.4"
    assert seen("10.0.3.4", None) == "10.0.3.4"
    # From anybody else, the header is the client's own claim: ignored.
    assert seen("203.0.113.9", "198.51.100.7") == "203.0.113.9"

"""The ``pli`` command: a thin layer over the library.

One place (:class:`PliGroup`) turns domain errors into a one-line message
with a stable code and a non-zero exit; a traceback only with ``--debug``.
Passphrases come from ``--passphrase-file`` or ``PLI_PASSPHRASE``, never
from an argument (they would show in ``ps`` and shell history).
"""

from __future__ import annotations

import os
import select
import sys
from pathlib import Path
from typing import Any

import click

from pli import __version__
from pli.client.castore import CaDirectory, serial_of, write_atomically
from pli.client.demo import run_demo
from pli.client.i18n import N_, _, cli_language
from pli.client.messaging_cli import MESSAGING_COMMANDS, read_text
from pli.client.reasons import reason
from pli.client.sealing import (
    LARGE_CONTENT_THRESHOLD,
    open_file_message,
    printable,
    seal_file_message,
)
from pli.client.usage import LocalizedGroup, LocalizedOption
from pli.crypto import (
    CryptoError,
    RevocationPolicy,
    SoftwareKey,
    TrustStore,
    build_certificate_request,
    certificate_pem,
    check_certificate_request,
    crl_pem,
    csr_pem,
    dump_pkcs12,
    envelope_to_smime,
    generate_private_key,
    load_certificate,
    load_certificate_request,
    load_certificates,
    load_crl,
    load_pkcs12,
)
from pli.identifiers import IdentifierError, IdentifierKind, parse_any, parse_identifier
from pli.mime import MimeError
from pli.server.commands import SERVER_COMMANDS, demo_server


class CliError(Exception):
    """A usage problem the user can fix; ``code`` is stable like the domain errors'."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _error_line(error: BaseException) -> str:
    if isinstance(error, CryptoError | IdentifierError | MimeError | CliError):
        return f"{error.code}: {reason(cli_language(), error.code, error.detail, error)}"
    code = getattr(error, "code", None)
    if isinstance(code, str) and code.isidentifier():
        # Other domain errors (configuration, imports) carry a stable code too.
        return f"{code}: {getattr(error, 'detail', None) or error}"
    if isinstance(error, OSError):
        return f"io_error: {error.strerror or error}: {error.filename or ''}".rstrip(": ")
    return "internal_error: " + _("échec inattendu (relancez avec --debug pour le détail)")


class PliGroup(LocalizedGroup):
    """Turns every domain error into ``pli: error: <code>: <detail>`` and exit code 1.

    Usage errors keep click's exit code, 2, in the same form (:mod:`pli.client.usage`).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except (click.Abort, KeyboardInterrupt):
            # Ctrl-C, or the end of input at a prompt: click would print "Aborted!".
            click.echo("pli: " + _("interrompu"), err=True)
            ctx.exit(1)
        except BrokenPipeError as error:
            if not _stdout_closed():
                # Another pipe (an output file that is a FIFO…): an error like any other.
                click.echo(f"pli: error: {_error_line(error)}", err=True)
                ctx.exit(1)
            # The reader went away (`pli inbox | head`): nothing to tell it, as click does.
            # Standard output is pointed at /dev/null so that Python's flush at exit
            # does not fail again on the closed pipe.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(1)
        except Exception as error:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"pli: error: {_error_line(error)}", err=True)
            ctx.exit(1)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll says POLLERR)."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (click's test runner)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _read_passphrase(passphrase_file: Path | None, *, new: bool = False) -> str:
    if passphrase_file is not None:
        text = read_text(passphrase_file)
        # The first line, without its line ending; other separators are part of it.
        passphrase = text.split("\n", 1)[0].removesuffix("\r")
    elif os.environ.get("PLI_PASSPHRASE"):
        passphrase = os.environ["PLI_PASSPHRASE"]
    elif sys.stdin.isatty():
        passphrase = click.prompt(
            _("Phrase secrète : "),
            hide_input=True,
            # click's own "Repeat for confirmation" is English whatever the language.
            confirmation_prompt=_("Confirmez la phrase secrète : ") if new else False,
            prompt_suffix="",
        )
    else:
        raise CliError(
            "passphrase_missing",
            _("indiquez --passphrase-file FICHIER ou définissez PLI_PASSPHRASE"),
        )
    if not passphrase:
        raise CliError("passphrase_missing", _("la phrase secrète est vide"))
    return passphrase


passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File whose first line is the passphrase (else PLI_PASSPHRASE).",
)


@click.group(
    cls=PliGroup,
    help=N_("Pli : messagerie de santé sécurisée, signée et chiffrée de bout en bout."),
)
@click.option(
    "--debug",
    cls=LocalizedOption,
    is_flag=True,
    help=N_("Afficher la trace complète d'une erreur (pour le support)."),
)
@click.version_option(__version__, prog_name="pli")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# --- identifiers ---------------------------------------------------------------------------------
@main.group("id")
def id_group() -> None:
    """National identifiers (RPPS, ADELI, FINESS, NIR/INS, NISS, NIHII)."""


@id_group.command("check")
@click.argument("value")
@click.option("--kind", type=click.Choice([k.value for k in IdentifierKind]), default=None)
def id_check(value: str, kind: str | None) -> None:
    """Check VALUE; print its normalised form and kind. Exit 1 when not valid."""
    if kind is not None:
        try:
            identifier = parse_identifier(value, kind)
        except IdentifierError as error:
            click.echo(f"invalid {kind}: {error.code}: {error.detail}", err=True)
            sys.exit(1)
        found = [identifier]
    else:
        found, errors = parse_any(value)
        if not found:
            for reason in errors:
                click.echo(f"invalid {reason.kind}: {reason.code}: {reason.detail}", err=True)
            sys.exit(1)
    for identifier in found:
        national = f" (national id {identifier.national_id})" if identifier.national_id else ""
        click.echo(f"{identifier.kind.value} {identifier.value}{national}")


# --- certificate authority -----------------------------------------------------------------------
@main.group("ca")
def ca_group() -> None:
    """The operator's certificate authority, kept in a directory."""


ca_dir_option = click.option(
    "--dir", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path)
)


@ca_group.command("init")
@ca_dir_option
@click.option("--name", required=True, help="The operator's name, in the root's subject.")
@click.option("--days", default=3650, show_default=True)
@passphrase_option
def ca_init(ca_dir: Path, name: str, days: int, passphrase_file: Path | None) -> None:
    """Create a root key and certificate in CA_DIR."""
    ca = CaDirectory.create(ca_dir, name, _read_passphrase(passphrase_file, new=True), days=days)
    click.echo(f"CA created in {ca_dir}; trust anchor: {ca_dir / 'ca.pem'}")
    click.echo(f"serial {ca.certificate.serial_number:x}")


@ca_group.command("issue")
@ca_dir_option
@click.option("--csr", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--days", default=3 * 365, show_default=True)
@passphrase_option
def ca_issue(ca_dir: Path, csr: Path, out: Path, days: int, passphrase_file: Path | None) -> None:
    """Issue an S/MIME certificate for the mailbox a CSR names."""
    ca = CaDirectory.open(ca_dir, _read_passphrase(passphrase_file))
    certificate = ca.issue(load_certificate_request(csr.read_bytes()), days=days)
    write_atomically(out, certificate_pem(certificate))
    click.echo(f"issued serial {certificate.serial_number:x} to {out}")


@ca_group.command("revoke")
@ca_dir_option
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--serial", help="Serial number in hexadecimal.")
@click.option("--reason", default="unspecified", show_default=True)
@passphrase_option
def ca_revoke(
    ca_dir: Path, cert: Path | None, serial: str | None, reason: str, passphrase_file: Path | None
) -> None:
    """Revoke a certificate (then publish a CRL with `pli ca crl`)."""
    if (cert is None) == (serial is None):
        raise CliError("usage", _("indiquez soit --cert, soit --serial"))
    try:
        number = serial_of(cert) if cert is not None else int(str(serial), 16)
    except ValueError:
        raise CliError("usage", _("--serial doit être en hexadécimal")) from None
    ca = CaDirectory.open(ca_dir, _read_passphrase(passphrase_file))
    ca.revoke(number, reason)
    click.echo(f"revoked serial {number:x} ({reason})")


@ca_group.command("crl")
@ca_dir_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--days", default=7, show_default=True)
@passphrase_option
def ca_crl(ca_dir: Path, out: Path | None, days: int, passphrase_file: Path | None) -> None:
    """Publish a CRL of every revoked certificate (CA_DIR/crl.pem, and --out)."""
    ca = CaDirectory.open(ca_dir, _read_passphrase(passphrase_file))
    crl = ca.publish_crl(days=days)
    if out is not None:
        write_atomically(out, crl_pem(crl))
    click.echo(
        f"CRL with {len(list(crl))} revoked certificate(s) written to {out or ca_dir / 'crl.pem'}"
    )


# --- keys ----------------------------------------------------------------------------------------
@main.group("keys")
def keys_group() -> None:
    """Personal keys, kept on the workstation in an encrypted PKCS#12 file."""


@keys_group.command("new")
@click.option("--email", required=True, help="The mailbox address the certificate will name.")
@click.option("--name", "common_name", default=None, help="Holder's name (default: the address).")
@click.option("--national-id", default=None, help="IDNPS / IDNST, e.g. 8 + RPPS.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--csr", required=True, type=click.Path(dir_okay=False, path_type=Path))
@passphrase_option
def keys_new(
    email: str,
    common_name: str | None,
    national_id: str | None,
    out: Path,
    csr: Path,
    passphrase_file: Path | None,
) -> None:
    """Create an RSA-3072 key in an encrypted PKCS#12 file, and its certificate request."""
    if out.exists():
        raise CliError(
            "file_exists", _("{path} existe déjà : une clé n'est jamais écrasée", path=out)
        )
    passphrase = _read_passphrase(passphrase_file, new=True)
    key = generate_private_key()
    request = build_certificate_request(
        key, email=email, common_name=common_name or email, national_id=national_id
    )
    # The CA checks it too; checking here gives the error before a file is written.
    check_certificate_request(request)
    write_atomically(out, dump_pkcs12(key, None, passphrase, name=email), 0o600)
    write_atomically(csr, csr_pem(request))
    click.echo(f"key written to {out}, certificate request to {csr}")


@keys_group.command("install")
@click.option(
    "--identity", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chain", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@passphrase_option
def keys_install(
    identity: Path, cert: Path, chain: Path | None, passphrase_file: Path | None
) -> None:
    """Put the issued certificate (and chain) into the identity file."""
    passphrase = _read_passphrase(passphrase_file)
    contents = load_pkcs12(identity.read_bytes(), passphrase)
    certificate = load_certificate(cert.read_bytes())
    contents.software_key(certificate)  # checks that the certificate is this key's
    extra = load_certificates(chain.read_bytes()) if chain else []
    write_atomically(
        identity, dump_pkcs12(contents.key, certificate, passphrase, chain=extra), 0o600
    )
    click.echo(f"certificate installed in {identity}")


# --- seal and open -------------------------------------------------------------------------------
def _identity(
    identity: Path, cert: Path | None, passphrase_file: Path | None
) -> tuple[SoftwareKey, list[Any]]:
    contents = load_pkcs12(identity.read_bytes(), _read_passphrase(passphrase_file))
    certificate = load_certificate(cert.read_bytes()) if cert else None
    if certificate is None and contents.certificate is None:
        raise CliError(
            "certificate_missing",
            _("le fichier d'identité ne contient aucun certificat : indiquez --cert"),
        )
    return contents.software_key(certificate), contents.chain


@main.command("seal")
@click.option(
    "--identity", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Signer's certificate.",
)
@click.option(
    "--to",
    "to",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--in", "source", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--attach", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--smime", is_flag=True, help="Write S/MIME text (for SMTP) instead of DER.")
@click.option(
    "--threshold",
    default=LARGE_CONTENT_THRESHOLD,
    show_default=True,
    help="Content above this many bytes travels outside the CMS, stream-encrypted.",
)
@passphrase_option
def seal_command(
    identity: Path,
    cert: Path | None,
    to: tuple[Path, ...],
    source: Path,
    out: Path,
    attach: tuple[Path, ...],
    smime: bool,
    threshold: int,
    passphrase_file: Path | None,
) -> None:
    """Sign MESSAGE.eml with your key, then encrypt it for every --to certificate and yourself."""
    signer, chain = _identity(identity, cert, passphrase_file)
    recipients = [load_certificate(path.read_bytes()) for path in to]
    blob_dir = out.with_name(out.name + ".blobs")
    envelope = seal_file_message(
        source.read_bytes(),
        signer,
        recipients,
        attach=attach,
        blob_dir=blob_dir,
        threshold=threshold,
        chain=chain,
    )
    write_atomically(out, envelope_to_smime(envelope) if smime else envelope)
    click.echo(f"sealed for {len(recipients)} recipient(s) and yourself: {out}")
    if blob_dir.exists():
        click.echo(f"large content stream-encrypted into {blob_dir}")


@main.command("open")
@click.option(
    "--identity", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Your certificate."
)
@click.option(
    "--trust",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--crl", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--no-revocation-check",
    is_flag=True,
    help="Accept signers no CRL covers (reported, never silent).",
)
@click.option(
    "--in", "source", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--blobs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the stream-encrypted content is (default: IN.blobs).",
)
@click.option(
    "--attachments",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Decrypt stream-encrypted content into this directory.",
)
@passphrase_option
def open_command(
    identity: Path,
    cert: Path | None,
    trust: tuple[Path, ...],
    crl: tuple[Path, ...],
    no_revocation_check: bool,
    source: Path,
    out: Path,
    blobs: Path | None,
    attachments: Path | None,
    passphrase_file: Path | None,
) -> None:
    """Decrypt and verify a sealed message; print the verified signer."""
    decrypter, _ = _identity(identity, cert, passphrase_file)
    anchors = [c for path in trust for c in load_certificates(path.read_bytes())]
    store = TrustStore(
        anchors,
        [load_crl(path.read_bytes()) for path in crl],
        RevocationPolicy.IF_AVAILABLE if no_revocation_check else RevocationPolicy.REQUIRE,
    )
    result = open_file_message(
        source.read_bytes(),
        decrypter,
        store,
        blob_dir=blobs or source.with_name(source.name + ".blobs"),
        attachments_dir=attachments,
    )
    write_atomically(out, result.opened.mime, 0o600)
    signer = result.opened.signer
    click.echo(f"signature: valid, signed by {', '.join(signer.emails)}")
    click.echo(
        f"signer: {printable(signer.common_name or '-')} national id {signer.national_id or '-'}"
    )
    click.echo(f"certificate sha256: {signer.fingerprint}")
    if result.opened.signed_at:
        click.echo(f"signed at: {result.opened.signed_at.isoformat()}")
    if not result.opened.details.revocation_checked:
        click.echo("warning: revocation_not_checked: no CRL covers the signer", err=True)
    if "not_addressed_to_you" in result.opened.warnings:
        click.echo(
            "warning: not_addressed_to_you: genuine, but neither To nor Cc names you"
            " (forwarded by someone else?)",
            err=True,
        )
    for path in result.extracted:
        click.echo(f"attachment: {path}")
    click.echo(f"message written to {out}")


for _command in SERVER_COMMANDS:
    main.add_command(_command)
for _command in MESSAGING_COMMANDS:
    main.add_command(_command)


@main.command("demo")
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option("--no-serve", is_flag=True, help="Create the demo operator, then stop.")
@click.option(
    "--seal-only",
    is_flag=True,
    help="Only a sealed round trip between two demo professionals, without the server.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --seal-only: keep the files here (default: a temporary directory).",
)
def demo_command(bind: str, no_serve: bool, seal_only: bool, directory: Path | None) -> None:
    """A demo operator with a sample directory, served on http://127.0.0.1:8000."""
    if seal_only:
        run_demo(directory)
        return
    demo_server(bind, serve=not no_serve)


@main.command("demo-code")
@click.argument("address")
def demo_code_command(address: str) -> None:
    """The current TOTP code of a demo account (what its authenticator app would show)."""
    from pli.server.commands import ensure_data_dir, setup_django  # noqa: PLC0415

    directory = ensure_data_dir()
    setup_django()
    from pli.server.demo import current_demo_code  # noqa: PLC0415

    click.echo(current_demo_code(directory, address))

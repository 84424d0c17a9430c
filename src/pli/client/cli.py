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
from pli.client.usage import (
    Choice,
    CliError,
    LocalizedCommand,
    LocalizedGroup,
    LocalizedPath,
    PositiveInteger,
    option,
    warn,
)
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
from pli.crypto.ca import REVOCATION_REASONS
from pli.identifiers import IdentifierError, IdentifierKind, parse_any, parse_identifier
from pli.mime import MimeError
from pli.server.commands import SERVER_COMMANDS, demo_server


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
                click.echo(f"pli: error: {printable(_error_line(error))}", err=True)
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
            click.echo(f"pli: error: {printable(_error_line(error))}", err=True)
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


passphrase_option = option(
    "--passphrase-file",
    type=LocalizedPath(exists=True, dir_okay=False, path_type=Path),
    help=N_("Fichier dont la première ligne est la phrase secrète (sinon PLI_PASSPHRASE)."),
)


@click.group(
    cls=PliGroup,
    help=N_("Pli : messagerie de santé sécurisée, signée et chiffrée de bout en bout."),
)
@option(
    "--debug",
    is_flag=True,
    help=N_("Afficher la trace complète d'une erreur (pour le support)."),
)
@click.version_option(__version__, prog_name="pli")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# --- identifiers ---------------------------------------------------------------------------------
@main.group(
    "id",
    cls=LocalizedGroup,
    help=N_("Identifiants nationaux (RPPS, ADELI, FINESS, NIR/INS, NISS, INAMI)."),
)
def id_group() -> None:
    pass


@id_group.command(
    "check",
    cls=LocalizedCommand,
    help=N_(
        "Vérifier VALUE ; afficher sa forme normalisée et son type. Code de sortie 1 si elle"
        " n'est pas valide."
    ),
)
@click.argument("value")
@option(
    "--kind",
    type=Choice([k.value for k in IdentifierKind]),
    default=None,
    help=N_("Le type attendu (sinon, chaque type que VALUE peut être)."),
)
def id_check(value: str, kind: str | None) -> None:
    if kind is not None:
        try:
            identifier = parse_identifier(value, kind)
        except IdentifierError as error:
            click.echo(_invalid_identifier(kind, error), err=True)
            sys.exit(1)
        found = [identifier]
    else:
        found, errors = parse_any(value)
        if not found:
            for refusal in errors:
                click.echo(_invalid_identifier(refusal.kind, refusal), err=True)
            sys.exit(1)
    for identifier in found:
        if identifier.national_id:
            click.echo(
                _(
                    "{kind} {value} (identifiant national {national_id})",
                    kind=identifier.kind.value,
                    value=identifier.value,
                    national_id=identifier.national_id,
                )
            )
        else:
            click.echo(f"{identifier.kind.value} {identifier.value}")


def _invalid_identifier(kind: object, error: IdentifierError) -> str:
    # The code stays as it is in both languages: scripts read it.
    return _(
        "{kind} invalide : {code} : {reason}",
        kind=getattr(kind, "value", kind),
        code=error.code,
        reason=reason(cli_language(), error.code, error.detail, error),
    )


# --- certificate authority -----------------------------------------------------------------------
@main.group(
    "ca",
    cls=LocalizedGroup,
    help=N_("L'autorité de certification de l'opérateur, conservée dans un dossier."),
)
def ca_group() -> None:
    pass


_PATH_IN = LocalizedPath(exists=True, dir_okay=False, path_type=Path)
_PATH_OUT = LocalizedPath(dir_okay=False, path_type=Path)
_POSITIVE = PositiveInteger()

ca_dir_option = option(
    "--dir",
    "ca_dir",
    required=True,
    type=LocalizedPath(file_okay=False, path_type=Path),
    help=N_("Le dossier de l'autorité (sa clé chiffrée, son certificat, ses registres)."),
)


@ca_group.command(
    "init", cls=LocalizedCommand, help=N_("Créer la clé racine et son certificat dans le dossier.")
)
@ca_dir_option
@option(
    "--name",
    required=True,
    help=N_("Le nom de l'opérateur, dans le sujet du certificat racine."),
)
@option(
    "--days",
    type=_POSITIVE,
    default=3650,
    show_default=True,
    help=N_("Durée de validité, en jours."),
)
@passphrase_option
def ca_init(ca_dir: Path, name: str, days: int, passphrase_file: Path | None) -> None:
    ca = CaDirectory.create(ca_dir, name, _read_passphrase(passphrase_file, new=True), days=days)
    click.echo(
        _(
            "autorité créée dans {directory} ; ancre de confiance : {anchor}",
            directory=ca_dir,
            anchor=ca_dir / "ca.pem",
        )
    )
    click.echo(_("numéro de série {serial}", serial=f"{ca.certificate.serial_number:x}"))


@ca_group.command(
    "issue",
    cls=LocalizedCommand,
    help=N_("Émettre un certificat S/MIME pour la boîte aux lettres que nomme une demande (CSR)."),
)
@ca_dir_option
@option(
    "--csr",
    required=True,
    type=_PATH_IN,
    help=N_("La demande de certificat (PEM)."),
)
@option(
    "--out",
    required=True,
    type=_PATH_OUT,
    help=N_("Où écrire le certificat (PEM)."),
)
@option(
    "--days",
    type=_POSITIVE,
    default=3 * 365,
    show_default=True,
    help=N_("Durée de validité, en jours."),
)
@passphrase_option
def ca_issue(ca_dir: Path, csr: Path, out: Path, days: int, passphrase_file: Path | None) -> None:
    ca = CaDirectory.open(ca_dir, _read_passphrase(passphrase_file))
    certificate = ca.issue(load_certificate_request(csr.read_bytes()), days=days)
    write_atomically(out, certificate_pem(certificate))
    click.echo(
        _(
            "certificat n° {serial} émis dans {path}",
            serial=f"{certificate.serial_number:x}",
            path=out,
        )
    )


@ca_group.command(
    "revoke",
    cls=LocalizedCommand,
    help=N_("Révoquer un certificat (puis publier la liste de révocation : pli ca crl)."),
)
@ca_dir_option
@option("--cert", type=_PATH_IN, help=N_("Le certificat à révoquer (PEM)."))
@option("--serial", help=N_("Ou son numéro de série, en hexadécimal."))
@option(
    "--reason",
    type=Choice(list(REVOCATION_REASONS)),
    default="unspecified",
    show_default=True,
    help=N_("Le motif de la révocation (RFC 5280)."),
)
@passphrase_option
def ca_revoke(
    ca_dir: Path, cert: Path | None, serial: str | None, reason: str, passphrase_file: Path | None
) -> None:
    if (cert is None) == (serial is None):
        raise CliError("usage", _("indiquez soit --cert, soit --serial"))
    try:
        number = serial_of(cert) if cert is not None else int(str(serial), 16)
    except ValueError:
        raise CliError("usage", _("--serial doit être en hexadécimal")) from None
    ca = CaDirectory.open(ca_dir, _read_passphrase(passphrase_file))
    ca.revoke(number, reason)
    click.echo(_("certificat n° {serial} révoqué ({reason})", serial=f"{number:x}", reason=reason))


@ca_group.command(
    "crl",
    cls=LocalizedCommand,
    help=N_(
        "Publier la liste de révocation (CRL) de tous les certificats révoqués, dans le dossier"
        " (crl.pem) et à --out."
    ),
)
@ca_dir_option
@option("--out", type=_PATH_OUT, default=None, help=N_("Une copie de la liste."))
@option(
    "--days",
    type=_POSITIVE,
    default=7,
    show_default=True,
    help=N_("Durée de validité de la liste, en jours."),
)
@passphrase_option
def ca_crl(ca_dir: Path, out: Path | None, days: int, passphrase_file: Path | None) -> None:
    ca = CaDirectory.open(ca_dir, _read_passphrase(passphrase_file))
    crl = ca.publish_crl(days=days)
    if out is not None:
        write_atomically(out, crl_pem(crl))
    click.echo(
        _(
            "liste de révocation écrite dans {path} : {count} certificat(s) révoqué(s)",
            path=out or ca_dir / "crl.pem",
            count=len(list(crl)),
        )
    )


# --- keys ----------------------------------------------------------------------------------------
@main.group(
    "keys",
    cls=LocalizedGroup,
    help=N_("Les clés personnelles, conservées sur le poste dans un fichier PKCS#12 chiffré."),
)
def keys_group() -> None:
    pass


@keys_group.command(
    "new",
    cls=LocalizedCommand,
    help=N_("Créer une clé RSA-3072 dans un fichier PKCS#12 chiffré, et sa demande de certificat."),
)
@option(
    "--email",
    required=True,
    help=N_("L'adresse de messagerie que nommera le certificat."),
)
@option(
    "--name",
    "common_name",
    default=None,
    help=N_("Le nom du titulaire (par défaut : l'adresse)."),
)
@option(
    "--national-id",
    default=None,
    help=N_("L'identifiant national (IDNPS / IDNST), par exemple 8 + RPPS."),
)
@option(
    "--out",
    required=True,
    type=_PATH_OUT,
    help=N_("Le fichier de clé à créer (PKCS#12) ; jamais écrasé."),
)
@option(
    "--csr",
    required=True,
    type=_PATH_OUT,
    help=N_("Où écrire la demande de certificat (PEM), pour l'opérateur."),
)
@passphrase_option
def keys_new(
    email: str,
    common_name: str | None,
    national_id: str | None,
    out: Path,
    csr: Path,
    passphrase_file: Path | None,
) -> None:
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
    click.echo(
        _("clé écrite dans {key}, demande de certificat dans {request}", key=out, request=csr)
    )


@keys_group.command(
    "install",
    cls=LocalizedCommand,
    help=N_("Installer le certificat émis (et sa chaîne) dans le fichier d'identité."),
)
@option(
    "--identity",
    required=True,
    type=_PATH_IN,
    help=N_("Le fichier d'identité (PKCS#12) créé par pli keys new."),
)
@option(
    "--cert",
    required=True,
    type=_PATH_IN,
    help=N_("Le certificat émis par l'opérateur (PEM)."),
)
@option(
    "--chain",
    type=_PATH_IN,
    default=None,
    help=N_("Les certificats intermédiaires (PEM)."),
)
@passphrase_option
def keys_install(
    identity: Path, cert: Path, chain: Path | None, passphrase_file: Path | None
) -> None:
    passphrase = _read_passphrase(passphrase_file)
    contents = load_pkcs12(identity.read_bytes(), passphrase)
    certificate = load_certificate(cert.read_bytes())
    contents.software_key(certificate)  # checks that the certificate is this key's
    extra = load_certificates(chain.read_bytes()) if chain else []
    write_atomically(
        identity, dump_pkcs12(contents.key, certificate, passphrase, chain=extra), 0o600
    )
    click.echo(_("certificat installé dans {path}", path=identity))


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


identity_option = option(
    "--identity",
    required=True,
    type=_PATH_IN,
    help=N_("Votre fichier PKCS#12 (clé et certificat) : il ne quitte jamais ce poste."),
)


@main.command(
    "seal",
    cls=LocalizedCommand,
    help=N_(
        "Signer un message MIME (.eml) avec votre clé, puis le chiffrer pour chaque certificat"
        " --to et pour vous-même."
    ),
)
@identity_option
@option(
    "--cert",
    type=_PATH_IN,
    help=N_("Votre certificat, si le fichier d'identité n'en contient pas."),
)
@option(
    "--to",
    "to",
    multiple=True,
    required=True,
    type=_PATH_IN,
    help=N_("Le certificat d'un destinataire (PEM ; répétable)."),
)
@option(
    "--in",
    "source",
    required=True,
    type=_PATH_IN,
    help=N_("Le message à sceller (MIME, .eml)."),
)
@option(
    "--out",
    required=True,
    type=_PATH_OUT,
    help=N_("Où écrire le message scellé."),
)
@option(
    "--attach",
    multiple=True,
    type=_PATH_IN,
    help=N_("Une pièce jointe (répétable)."),
)
@option(
    "--smime",
    is_flag=True,
    help=N_("Écrire du texte S/MIME (pour SMTP) plutôt que du DER."),
)
@option(
    "--threshold",
    type=_POSITIVE,
    default=LARGE_CONTENT_THRESHOLD,
    show_default=True,
    help=N_("Au-delà de ce nombre d'octets, le contenu voyage hors du CMS, chiffré en flux."),
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
    click.echo(
        _(
            "scellé pour {count} destinataire(s) et vous-même : {path}",
            count=len(recipients),
            path=out,
        )
    )
    if blob_dir.exists():
        click.echo(_("contenu volumineux chiffré en flux dans {path}", path=blob_dir))


@main.command(
    "open",
    cls=LocalizedCommand,
    help=N_("Déchiffrer et vérifier un message scellé ; afficher le signataire vérifié."),
)
@identity_option
@option(
    "--cert",
    type=_PATH_IN,
    help=N_("Votre certificat, si le fichier d'identité n'en contient pas."),
)
@option(
    "--trust",
    required=True,
    multiple=True,
    type=_PATH_IN,
    help=N_("Ancres de confiance (le PEM de l'autorité de certification de l'opérateur)."),
)
@option(
    "--crl",
    multiple=True,
    type=_PATH_IN,
    help=N_("Listes de révocation (CRL) des ancres."),
)
@option(
    "--no-revocation-check",
    is_flag=True,
    help=N_("Accepter les signataires qu'aucune liste de révocation ne couvre (toujours signalé)."),
)
@option(
    "--in",
    "source",
    required=True,
    type=_PATH_IN,
    help=N_("Le message scellé (DER ou S/MIME)."),
)
@option(
    "--out",
    required=True,
    type=_PATH_OUT,
    help=N_("Où écrire le message déchiffré (MIME)."),
)
@option(
    "--blobs",
    type=LocalizedPath(file_okay=False, path_type=Path),
    default=None,
    help=N_("Où se trouve le contenu chiffré en flux (par défaut : le message suivi de .blobs)."),
)
@option(
    "--attachments",
    type=LocalizedPath(file_okay=False, path_type=Path),
    default=None,
    help=N_("Déchiffrer le contenu chiffré en flux dans ce dossier."),
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
    decrypter, _chain = _identity(identity, cert, passphrase_file)
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
    click.echo(_("signature : valide, signée par {emails}", emails=", ".join(signer.emails)))
    click.echo(
        _(
            "signataire : {name}, identifiant national {national_id}",
            name=printable(signer.common_name or "-"),
            national_id=signer.national_id or "-",
        )
    )
    click.echo(_("empreinte SHA-256 du certificat : {fingerprint}", fingerprint=signer.fingerprint))
    if result.opened.signed_at:
        click.echo(_("signé le : {moment}", moment=result.opened.signed_at.isoformat()))
    if not result.opened.details.revocation_checked:
        warn(
            "revocation_not_checked",
            _("aucune liste de révocation ne couvre le signataire"),
        )
    if "not_addressed_to_you" in result.opened.warnings:
        warn(
            "not_addressed_to_you",
            _("authentique, mais ni To ni Cc ne vous nomme (transféré par quelqu'un d'autre ?)"),
        )
    for path in result.extracted:
        click.echo(_("pièce jointe : {path}", path=path))
    click.echo(_("message écrit dans {path}", path=out))


for _command in [*SERVER_COMMANDS, *MESSAGING_COMMANDS]:
    main.add_command(_command)


@main.command(
    "demo",
    cls=LocalizedCommand,
    help=N_(
        "Un opérateur de démonstration avec un annuaire d'exemple, servi sur http://127.0.0.1:8000."
    ),
)
@option(
    "--bind",
    default="127.0.0.1:8000",
    show_default=True,
    help=N_("L'adresse et le port d'écoute."),
)
@option(
    "--no-serve",
    is_flag=True,
    help=N_("Créer l'opérateur de démonstration, puis s'arrêter."),
)
@option(
    "--seal-only",
    is_flag=True,
    help=N_(
        "Seulement un aller-retour scellé entre deux professionnels de démonstration, sans serveur."
    ),
)
@option(
    "--dir",
    "directory",
    type=LocalizedPath(file_okay=False, path_type=Path),
    default=None,
    help=N_("Avec --seal-only : garder les fichiers ici (par défaut : un dossier temporaire)."),
)
def demo_command(bind: str, no_serve: bool, seal_only: bool, directory: Path | None) -> None:
    if seal_only:
        run_demo(directory)
        return
    demo_server(bind, serve=not no_serve)


@main.command(
    "demo-code",
    cls=LocalizedCommand,
    help=N_(
        "Le code TOTP du moment d'un compte de démonstration (ce qu'afficherait son"
        " application d'authentification)."
    ),
)
@click.argument("address")
def demo_code_command(address: str) -> None:
    from pli.server.commands import ensure_data_dir, setup_django  # noqa: PLC0415

    directory = ensure_data_dir()
    setup_django()
    from pli.server.demo import current_demo_code  # noqa: PLC0415

    click.echo(current_demo_code(directory, address))

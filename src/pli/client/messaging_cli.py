"""``pli login``, ``pli send``, ``pli inbox``, ``pli read``, ``pli reply``: messaging from a shell.

A thin layer over :class:`pli.client.Client` (docs/sdk.md), which does the
cryptography on this workstation. Errors are the SDK's typed errors, turned
into one line with their stable code by ``PliGroup`` (``pli.client.cli``).

Secrets never come from an argument (``ps``, shell history): the account
passphrase (``pli login``) and the identity's passphrase (``send``, ``read``,
``reply``, as ``pli seal`` / ``pli open``) come from ``--passphrase-file``,
a variable or a hidden prompt: ``PLI_ACCOUNT_PASSPHRASE`` for the account's,
``PLI_PASSPHRASE`` for the identity's. Two variables, so that a script holding
the identity's never sends it to the server as the account's (the key's
passphrase never leaves the machine). The TOTP code is short-lived: ``--code``
is for scripts, otherwise a hidden prompt asks for it once the passphrase is
accepted.

French first (``PLI_LANGUAGE``, :mod:`pli.client.i18n`): output lines, prompts,
help texts and the detail of errors. What scripts rely on does not change with
the language: the ``pli: error: <code>: `` and ``warning: <code>: `` prefixes,
the codes, exit codes, identifiers and addresses.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pli.client.i18n import N_, _, cli_language
from pli.client.sdk import (
    Client,
    ClientError,
    Delivery,
    DirectoryEntry,
    ReadMessage,
    RefusedAttachment,
    SendResult,
    SignatureStatus,
    UploadInterrupted,
)
from pli.client.sealing import printable
from pli.client.usage import (
    Choice,
    LocalizedCommand,
    LocalizedPath,
    PositiveInteger,
    option,
    warn,
)

_FILE = LocalizedPath(exists=True, dir_okay=False, path_type=Path)


def _command(name: str, help: str) -> Callable[[Callable[..., Any]], click.Command]:  # noqa: A002 - click's name
    return click.command(name, cls=LocalizedCommand, help=help)


def _echo(text: str) -> None:
    """Print output: whatever the sender or the server put in it (an attachment's type,
    a mailbox, an unknown state), no escape sequence reaches the terminal."""
    click.echo(printable(text, lines=True))


def read_text(path: Path) -> str:
    """A UTF-8 text file; another encoding (cp1252 from an old editor) is named, not a crash."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ClientError(
            "not_utf8",
            _(
                "{path} n'est pas un texte en UTF-8 : enregistrez-le de nouveau en UTF-8 (Unicode)",
                path=path,
            ),
        ) from None


#: The account's passphrase (``pli login``), sent to the server: never the variable that
#: opens the identity file (``PLI_PASSPHRASE``), whose secret must not leave the machine.
LOGIN_VARIABLE = "PLI_ACCOUNT_PASSPHRASE"


def _secret(passphrase_file: Path | None, what: str, variable: str = "PLI_PASSPHRASE") -> str:
    if passphrase_file is not None:
        # The first line, without its line ending; other separators are part of it.
        text = read_text(passphrase_file)
        value = text.split("\n", 1)[0].removesuffix("\r")
    elif os.environ.get(variable):
        value = os.environ[variable]
    elif sys.stdin.isatty():
        value = click.prompt(what, hide_input=True, prompt_suffix="")
    else:
        raise ClientError(
            "passphrase_missing",
            _("indiquez --passphrase-file FICHIER ou définissez {variable}", variable=variable),
        )
    if not value:
        raise ClientError("passphrase_missing", _("la phrase secrète est vide"))
    return value


def _client(
    server: str | None,
    session_file: Path | None,
    *,
    identity: Path | None = None,
    passphrase_file: Path | None = None,
    trust: tuple[Path, ...] = (),
    crl: tuple[Path, ...] = (),
) -> Client:
    base_url = server or Client.saved_server(session_file, language=cli_language())
    if not base_url:
        raise ClientError(
            "server_missing", _("indiquez --server URL (ou PLI_SERVER), puis lancez pli login")
        )
    return Client(
        base_url,
        identity=identity,
        # Asked only when the key is needed, after the server answered.
        passphrase=lambda: _secret(
            passphrase_file, _("Phrase secrète de votre fichier de clé (PKCS#12) : ")
        ),
        trust=list(trust) or None,
        crl=list(crl),
        session_file=session_file,
        language=cli_language(),
    )


def _server_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = option(
        "--session-file",
        envvar="PLI_SESSION_FILE",
        type=LocalizedPath(dir_okay=False, path_type=Path),
        default=None,
        help=N_("Le fichier où la session est conservée (par défaut ~/.config/pli/session.json)."),
    )(function)
    return option(
        "--server",
        envvar="PLI_SERVER",
        default=None,
        help=N_("L'URL du serveur Pli (par défaut : le dernier auquel vous vous êtes connecté)."),
    )(function)


#: ``--attach``, the same for a message and a reply.
_attach_option = option(
    "--attach",
    multiple=True,
    type=_FILE,
    help=N_("Un fichier à joindre (à répéter pour plusieurs)."),
)


#: ``--mailbox``, for the commands that act on one copy of a message.
_mailbox_option = option(
    "--mailbox",
    default=None,
    help=N_("La boîte dont prendre la copie, si plusieurs de vos boîtes ont reçu le message."),
)


def _key_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            option(
                "--identity",
                envvar="PLI_IDENTITY",
                required=True,
                type=_FILE,
                help=N_(
                    "Votre fichier PKCS#12 (clé et certificat) : il ne quitte jamais ce poste."
                ),
            ),
            option(
                "--trust",
                envvar="PLI_TRUST",
                multiple=True,
                required=True,
                type=_FILE,
                help=N_(
                    "Ancres de confiance (le PEM de l'autorité de certification de l'opérateur) :"
                    " signataires et destinataires doivent s'y rattacher."
                ),
            ),
            option(
                "--crl",
                envvar="PLI_CRL",
                multiple=True,
                type=_FILE,
                help=N_("Listes de révocation (CRL) des ancres."),
            ),
            option(
                "--passphrase-file",
                type=_FILE,
                help=N_(
                    "Fichier dont la première ligne ouvre votre fichier de clé"
                    " (sinon PLI_PASSPHRASE)."
                ),
            ),
        ]
    ):
        function = decorator(function)
    return function


def _read_body(body_file: str) -> str:
    if body_file == "-":
        try:
            return sys.stdin.read()
        except UnicodeDecodeError:
            raise ClientError(
                "not_utf8", _("l'entrée standard n'est pas un texte en UTF-8")
            ) from None
    return read_text(Path(body_file))


def _sent(client: Client, send: Callable[[], SendResult]) -> SendResult:
    """Run a send; an upload cut off is given up here, since no command resumes it."""
    try:
        return send()
    except UploadInterrupted as interrupted:
        # The SDK keeps it for resume_upload(); a shell cannot, and would leave the
        # upload on the server and its ciphertext (with no key left) in a temporary dir.
        for pending in [interrupted.pending, *interrupted.completed]:
            client.cancel_upload(pending)
        raise ClientError(
            "upload_interrupted",
            _(
                "la connexion a été coupée pendant l'envoi d'une pièce jointe ({code}) :"
                " rien n'a été envoyé, renvoyez le message",
                code=interrupted.cause.code,
            ),
        ) from None


def _attachment_directory(directory: Path) -> Path:
    """Made (``0700``) and writable before the message is read, marked read and answered."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ClientError(
            "save_directory_unusable",
            _(
                "impossible d'écrire les pièces jointes dans {directory} : {reason}",
                directory=directory,
                reason=error.strerror or error,
            ),
        ) from None
    return directory


#: How people read the server's codes (as the web mail names them); unknown ones are shown as is.
_FOLDERS = {
    "inbox": N_("Boîte de réception"),
    "sent": N_("Envoyés"),
    "archive": N_("Archives"),
    "trash": N_("Corbeille"),
}
_DELIVERY_STATES = {
    "queued": N_("en attente"),
    "delivered": N_("distribué"),
    "read": N_("lu"),
    "failed": N_("échec"),
}
_PARTS = {
    "owner": N_("titulaire"),
    "member": N_("membre"),
    "manager": N_("gestionnaire"),
    "substitute": N_("remplaçant"),
}
_SIGNATURE_STATUSES = {"valid": N_("valide")}


def _label(labels: dict[str, str], code: str) -> str:
    return _(labels[code]) if code in labels else code


def _report_sent(result: SendResult) -> None:
    for finding in result.warnings:
        warn(finding.code.value, finding.message(cli_language()))
    # The id stays the second word in both languages (scripts pick it up).
    _echo(_("Message {id} envoyé (fil {thread})", id=result.id, thread=result.thread))
    for delivery in result.deliveries:
        _echo(_delivery_line(delivery))


def _delivery_line(delivery: Delivery) -> str:
    return "  " + _(
        "{recipient} : {state}",
        recipient=printable(delivery.recipient),
        state=_label(_DELIVERY_STATES, delivery.state),
    )


# --- commands ------------------------------------------------------------------------------------
@_command(
    "login",
    help=N_(
        "Se connecter (phrase secrète, puis code TOTP ou code de secours) ; la session est"
        " gardée pour les commandes suivantes."
    ),
)
@click.argument("username", required=False)
@_server_options
@option(
    "--passphrase-file",
    type=_FILE,
    help=N_(
        "Fichier dont la première ligne est la phrase secrète du compte"
        " (sinon PLI_ACCOUNT_PASSPHRASE)."
    ),
)
@option("--code", default=None, help=N_("Le code TOTP ou le code de secours, pour les scripts."))
def login_command(
    username: str | None,
    server: str | None,
    session_file: Path | None,
    passphrase_file: Path | None,
    code: str | None,
) -> None:
    client = _client(server, session_file)
    if not username:
        if not sys.stdin.isatty():
            raise ClientError(
                "username_missing", _("indiquez USERNAME (votre adresse de messagerie)")
            )
        username = str(click.prompt(_("Adresse : "), prompt_suffix=""))
    passphrase = _secret(passphrase_file, _("Phrase secrète : "), LOGIN_VARIABLE)

    def second_factor() -> str:
        if code:
            return code
        if not sys.stdin.isatty():
            raise ClientError("code_missing", _("indiquez --code (code TOTP ou code de secours)"))
        return str(
            click.prompt(_("Code (TOTP ou code de secours) : "), hide_input=True, prompt_suffix="")
        )

    result = client.login(username, passphrase, second_factor)
    _echo(
        _(
            "Connecté en tant que {username} ({method}) sur {server}",
            username=result.username,
            method=result.method,
            server=client.base_url,
        )
    )


@_command("logout", help=N_("Terminer la session sur le serveur et l'oublier sur ce poste."))
@_server_options
def logout_command(server: str | None, session_file: Path | None) -> None:
    client = _client(server, session_file)
    client.logout()
    _echo(_("Déconnecté de {server}", server=client.base_url))


@_command(
    "mailboxes",
    help=N_(
        "Les boîtes auxquelles vous accédez : la vôtre, puis celles dont vous êtes membre ou"
        " remplaçant."
    ),
)
@_server_options
def mailboxes_command(server: str | None, session_file: Path | None) -> None:
    for mailbox in _client(server, session_file).mailboxes():
        line = _(
            "{address}  {kind} {part}  non lus : {unread}  espace : {used} / {quota} octets",
            address=mailbox.address,
            kind=mailbox.kind,
            part=_label(_PARTS, mailbox.part),
            unread=mailbox.unread,
            used=mailbox.used_bytes,
            quota=mailbox.quota_bytes,
        )
        _echo(line if mailbox.active else line + _(" (inactive)"))


@_command(
    "send",
    help=N_(
        "Vérifier l'objet et les destinataires, signer et chiffrer sur ce poste, puis envoyer."
    ),
)
@_server_options
@option("--from", "from_", required=True, help=N_("La boîte d'envoi."))
@option(
    "--to",
    "to",
    multiple=True,
    required=True,
    help=N_("Un destinataire (à répéter pour plusieurs)."),
)
@option("--subject", required=True, help=N_("Pseudonymisé : ni nom ni numéro de patient."))
@option("--patient-ins", default=None, help=N_("L'INS/NIR du patient (ou son NISS)."))
@option(
    "--patient-name",
    multiple=True,
    help=N_("Le nom ou le prénom du patient : pli vérifie que l'objet ne le contient pas."),
)
@option(
    "--body-file",
    required=True,
    type=LocalizedPath(dir_okay=False, allow_dash=True),
    help=N_("Le texte du message, en UTF-8 (« - » : l'entrée standard)."),
)
@_attach_option
@_key_options
def send_command(  # noqa: PLR0917 - click passes each option as a parameter
    server: str | None,
    session_file: Path | None,
    from_: str,
    to: tuple[str, ...],
    subject: str,
    patient_ins: str | None,
    patient_name: tuple[str, ...],
    body_file: str,
    attach: tuple[Path, ...],
    identity: Path,
    trust: tuple[Path, ...],
    crl: tuple[Path, ...],
    passphrase_file: Path | None,
) -> None:
    client = _client(
        server,
        session_file,
        identity=identity,
        passphrase_file=passphrase_file,
        trust=trust,
        crl=crl,
    )
    body = _read_body(body_file)
    result = _sent(
        client,
        lambda: client.send(
            from_,
            list(to),
            subject,
            body,
            patient_id=patient_ins,
            attachments=list(attach),
            patient_names=list(patient_name),
        ),
    )
    _report_sent(result)


@_command(
    "inbox",
    help=N_(
        "Lister un dossier, du plus récent au plus ancien : métadonnées seulement (l'objet est"
        " dans l'enveloppe chiffrée)."
    ),
)
@_server_options
@option("--mailbox", default=None, help=N_("Quelle boîte (par défaut : la vôtre)."))
@option(
    "--folder",
    type=Choice(list(_FOLDERS)),
    default="inbox",
    show_default=True,
    help=N_("Le dossier : inbox (réception), sent (envoyés), archive ou trash (corbeille)."),
)
@option(
    "--page",
    type=PositiveInteger(),
    default=1,
    show_default=True,
    help=N_("La page, à partir de 1 (les plus récents)."),
)
def inbox_command(
    server: str | None, session_file: Path | None, mailbox: str | None, folder: str, page: int
) -> None:
    listing = _client(server, session_file).inbox(mailbox, folder, page)
    if not listing.results:
        _echo(_("Le dossier « {folder} » est vide.", folder=_label(_FOLDERS, folder)))
    for item in listing.results:
        mark = " " if item.read else "*"
        other = ", ".join(item.recipients) if folder == "sent" else item.from_
        line = _(
            "{mark} {id}  {date}  {other}  {size} o",
            mark=mark,
            id=item.id,
            date=f"{item.received_at.astimezone():%Y-%m-%d %H:%M}",
            other=printable(other),
            size=item.size,
        )
        line += _("  (réponse)") if item.in_reply_to else ""
        _echo(line + (_("  [suivi]") if item.flagged else ""))
    if listing.has_next:
        _echo(
            _(
                "Suite : pli inbox --folder {folder} --page {page}",
                folder=folder,
                page=listing.page + 1,
            )
        )


def _signer_entry(client: Client, message: ReadMessage) -> DirectoryEntry | ClientError | None:
    """The signer's directory entry; a failure to ask is shown, not raised: the message is
    already opened (and marked read), and must still be shown."""
    emails = message.signature.signer_emails
    if not emails:
        return None
    try:
        return client.directory_entry(emails[0])
    except ClientError as error:
        return error


def _show_signer(signature: SignatureStatus, entry: DirectoryEntry | ClientError | None) -> None:
    """The signer as the directory publishes them (REQ-SIGNATURE), beside the certificate."""
    signer = signature.signer_emails[0] if signature.signer_emails else "-"
    if isinstance(entry, ClientError):
        warn(
            "signer_directory_unavailable",
            _("l'annuaire n'a pas pu être consulté ({code})", code=entry.code),
        )
        return
    if entry is None:
        warn(
            "signer_not_in_directory",
            _(
                "{address} n'a pas (ou plus) de boîte active dans l'annuaire",
                address=printable(signer),
            ),
        )
        return
    who = [entry.name or entry.service or entry.address]
    who += [x for x in (entry.profession, entry.organisation) if x]
    if entry.national_id:
        if entry.identifier_type:
            who.append(entry.identifier_type.upper())
        who.append(_("identifiant national {national_id}", national_id=entry.national_id))
    _echo(_("Annuaire : {who}", who=printable(", ".join(who))))
    if entry.national_id and signature.national_id and entry.national_id != signature.national_id:
        warn(
            "signer_directory_mismatch",
            _(
                "l'identifiant national du certificat ({certificate}) n'est pas celui de"
                " l'annuaire ({directory})",
                certificate=signature.national_id,
                directory=entry.national_id,
            ),
        )


def _show_deliveries(deliveries: list[Delivery]) -> None:
    """On the sending mailbox's copy: each recipient's state, and when they read it."""
    _echo(_("Distribution :"))
    for delivery in deliveries:
        line = _delivery_line(delivery)
        if delivery.read_at:
            line += _(", lu le {date}", date=f"{delivery.read_at.astimezone():%Y-%m-%d %H:%M}")
        _echo(line)


def _show(
    message: ReadMessage,
    signer: DirectoryEntry | ClientError | None,
    *,
    saving: bool,
    saved: dict[int, Path],
    refusals: list[RefusedAttachment],
) -> None:
    signature = message.signature
    _echo(_("De : {address}", address=printable(message.from_address)))
    if message.sender:
        _echo(_("Envoyé par : {address}", address=printable(message.sender)))
    _echo(_("À : {addresses}", addresses=printable(", ".join(message.to))))
    if message.cc:
        _echo(_("Cc : {addresses}", addresses=printable(", ".join(message.cc))))
    _echo(_("Date : {date}", date=message.date.isoformat()))
    _echo(_("Objet : {subject}", subject=printable(message.subject)))
    if message.patient_id:
        _echo(_("Patient : {patient}", patient=message.patient_id))
    _echo(
        _(
            "Message : {id} dans {mailbox} ({folder})",
            id=message.id,
            mailbox=message.summary.mailbox,
            folder=_label(_FOLDERS, message.summary.folder),
        )
    )
    _echo(
        _(
            "Signature : {status}, signée par {signers}",
            status=_label(_SIGNATURE_STATUSES, signature.status),
            signers=", ".join(signature.signer_emails),
        )
    )
    _echo(
        _(
            "Signataire : {name}, identifiant national {national_id}",
            name=printable(signature.common_name or "-"),
            national_id=signature.national_id or "-",
        )
    )
    _echo(_("Empreinte SHA-256 du certificat : {fingerprint}", fingerprint=signature.fingerprint))
    if signature.signed_at:
        _echo(_("Signé le : {date}", date=signature.signed_at.isoformat()))
    _show_signer(signature, signer)
    if not signature.revocation_checked:
        warn(
            "revocation_not_checked",
            _("aucune liste de révocation ne couvre le signataire (--crl)"),
        )
    for index, attachment in enumerate(message.attachments):
        _echo(
            _(
                "Pièce jointe : {name} ({content_type}, {size} octets)",
                name=printable(attachment.filename),
                content_type=attachment.content_type,
                size=len(attachment.data),
            )
            + (f" -> {saved[index]}" if index in saved else "")
        )
    for index, part in enumerate(message.external_parts, start=len(message.attachments)):
        # Streamed (decision 0003): fetched and decrypted only by --save-attachments.
        _echo(
            _(
                "Pièce jointe volumineuse : {name} ({content_type}, {size} octets)",
                name=printable(part.filename),
                content_type=part.content_type,
                size=part.plaintext_size,
            )
            + (f" -> {saved[index]}" if index in saved else "")
        )
    for refused in refusals:
        warn(
            refused.code,
            _(
                "{detail} : pièce non enregistrée (--any-type l'enregistre quand même)",
                detail=refused.detail,
            ),
        )
    if message.external_parts and not saving:
        _echo(
            _(
                "(les pièces volumineuses restent sur le serveur :"
                " --save-attachments DOSSIER les télécharge et les déchiffre)"
            )
        )
    if message.summary.deliveries is not None:
        _show_deliveries(message.summary.deliveries)
    _echo("")
    _echo(message.body)  # _echo keeps its lines, drops escape sequences


@_command(
    "read",
    help=N_(
        "Déchiffrer et vérifier un message sur ce poste ; afficher les en-têtes, le signataire"
        " et le corps ; le marquer comme lu."
    ),
)
@click.argument("message_id")
@_server_options
@_mailbox_option
@option(
    "--save-attachments",
    type=LocalizedPath(file_okay=False, path_type=Path),
    default=None,
    help=N_(
        "Enregistrer les pièces jointes dans ce dossier (créé s'il manque ; aucun fichier"
        " n'est écrasé)."
    ),
)
@option(
    "--any-type",
    is_flag=True,
    help=N_(
        "Enregistrer aussi les pièces d'un type que l'opérateur n'accepte pas, ou dont le"
        " contenu n'est pas de son type (à vos risques)."
    ),
)
@_key_options
def read_command(  # noqa: PLR0917 - click passes each option as a parameter
    message_id: str,
    server: str | None,
    session_file: Path | None,
    mailbox: str | None,
    save_attachments: Path | None,
    any_type: bool,
    identity: Path,
    trust: tuple[Path, ...],
    crl: tuple[Path, ...],
    passphrase_file: Path | None,
) -> None:
    client = _client(
        server,
        session_file,
        identity=identity,
        passphrase_file=passphrase_file,
        trust=trust,
        crl=crl,
    )
    directory = _attachment_directory(save_attachments) if save_attachments else None
    message = client.read(message_id, mailbox)
    refusals = [] if any_type else message.refused_attachments()
    saved: dict[int, Path] = {}
    if directory:
        written = iter(message.save_attachments(directory, any_type=any_type))
        skipped = {r.index for r in refusals}
        everything = len(message.attachments) + len(message.external_parts)
        saved = {i: next(written) for i in range(everything) if i not in skipped}
    _show(
        message,
        _signer_entry(client, message),
        saving=directory is not None,
        saved=saved,
        refusals=refusals,
    )


@_command(
    "reply",
    help=N_(
        "Répondre à un message, à son expéditeur, dans sa conversation (l'original est"
        " d'abord vérifié)."
    ),
)
@click.argument("message_id")
@_server_options
@_mailbox_option
@option(
    "--body-file",
    required=True,
    type=LocalizedPath(dir_okay=False, allow_dash=True),
    help=N_("Le texte de la réponse, en UTF-8 (« - » : l'entrée standard)."),
)
@_attach_option
@_key_options
def reply_command(  # noqa: PLR0917 - click passes each option as a parameter
    message_id: str,
    server: str | None,
    session_file: Path | None,
    mailbox: str | None,
    body_file: str,
    attach: tuple[Path, ...],
    identity: Path,
    trust: tuple[Path, ...],
    crl: tuple[Path, ...],
    passphrase_file: Path | None,
) -> None:
    client = _client(
        server,
        session_file,
        identity=identity,
        passphrase_file=passphrase_file,
        trust=trust,
        crl=crl,
    )
    body = _read_body(body_file)
    _report_sent(
        _sent(client, lambda: client.reply(message_id, body, list(attach), mailbox=mailbox))
    )


@_command(
    "move",
    help=N_(
        "Ranger la copie d'un message de votre boîte : inbox, archive ou trash (un message"
        " reçu), sent, archive ou trash (un message envoyé)."
    ),
)
@click.argument("message_id")
@click.argument("folder", type=Choice(list(_FOLDERS)))
@_server_options
@_mailbox_option
def move_command(
    message_id: str, folder: str, server: str | None, session_file: Path | None, mailbox: str | None
) -> None:
    summary = _client(server, session_file).move(message_id, folder, mailbox)
    _echo(
        _(
            "Message {id} rangé dans « {folder} »",
            id=summary.id,
            folder=_label(_FOLDERS, summary.folder),
        )
    )


@_command(
    "flag",
    help=N_("Marquer un message à suivre (--off : ôter la marque), pour toute la boîte."),
)
@click.argument("message_id")
@option("--off", is_flag=True, help=N_("Ôter la marque."))
@_server_options
@_mailbox_option
def flag_command(
    message_id: str, off: bool, server: str | None, session_file: Path | None, mailbox: str | None
) -> None:
    summary = _client(server, session_file).flag(message_id, not off, mailbox)
    if summary.flagged:
        _echo(_("Message {id} marqué à suivre", id=summary.id))
    else:
        _echo(_("Message {id} : marque ôtée", id=summary.id))


@_command(
    "delete",
    help=N_(
        "Mettre la copie d'un message à la corbeille ; avec --permanent, supprimer"
        " définitivement une copie qui est dans la corbeille (les copies des autres boîtes"
        " restent)."
    ),
)
@click.argument("message_id")
@_server_options
@_mailbox_option
@option(
    "--permanent",
    is_flag=True,
    help=N_("Supprimer définitivement (la copie doit être dans la corbeille)."),
)
def delete_command(
    message_id: str,
    server: str | None,
    session_file: Path | None,
    mailbox: str | None,
    permanent: bool,
) -> None:
    if _client(server, session_file).delete(message_id, mailbox, permanent=permanent):
        _echo(_("Message {id} supprimé définitivement", id=message_id))
    else:
        _echo(_("Message {id} mis à la corbeille", id=message_id))


MESSAGING_COMMANDS = [
    login_command,
    logout_command,
    mailboxes_command,
    send_command,
    inbox_command,
    read_command,
    reply_command,
    move_command,
    flag_command,
    delete_command,
]

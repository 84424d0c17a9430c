"""``pli login``, ``pli send``, ``pli inbox``, ``pli read``, ``pli reply``: messaging from a shell.

A thin layer over :class:`pli.client.Client` (docs/sdk.md), which does the
cryptography on this workstation. Errors are the SDK's typed errors, turned
into one line with their stable code by ``PliGroup`` (``pli.client.cli``).

Secrets never come from an argument (``ps``, shell history): the account
passphrase (``pli login``) and the identity's passphrase (``send``, ``read``,
``reply``, as ``pli seal`` / ``pli open``) come from ``--passphrase-file``,
``PLI_PASSPHRASE`` or a hidden prompt. The TOTP code is short-lived: ``--code``
is for scripts, otherwise a hidden prompt asks for it once the passphrase is
accepted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pli.client.sdk import Client, ClientError, ReadMessage, SendResult, UploadInterrupted

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _printable_line(text: str) -> str:
    """One line of someone else's text: no control, format (bidi) or line characters."""
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))


def _printable_body(text: str) -> str:
    """A body for the terminal: lines and tabs kept, escape sequences and bidi controls not
    (a message could otherwise rewrite what the screen shows, signature line included)."""
    return "".join(
        c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp")
    )


def read_text(path: Path) -> str:
    """A UTF-8 text file; another encoding (cp1252 from an old editor) is named, not a crash."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ClientError(
            "not_utf8", f"{path} is not UTF-8 text: save it again as UTF-8 (Unicode)"
        ) from None


def _secret(passphrase_file: Path | None, what: str) -> str:
    if passphrase_file is not None:
        # The first line, without its line ending; other separators are part of it.
        text = read_text(passphrase_file)
        value = text.split("\n", 1)[0].removesuffix("\r")
    elif os.environ.get("PLI_PASSPHRASE"):
        value = os.environ["PLI_PASSPHRASE"]
    elif sys.stdin.isatty():
        value = click.prompt(what, hide_input=True)
    else:
        raise ClientError("passphrase_missing", "give --passphrase-file FILE or set PLI_PASSPHRASE")
    if not value:
        raise ClientError("passphrase_missing", "the passphrase is empty")
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
    base_url = server or Client.saved_server(session_file)
    if not base_url:
        raise ClientError("server_missing", "give --server URL (or PLI_SERVER), then pli login")
    return Client(
        base_url,
        identity=identity,
        # Asked only when the key is needed, after the server answered.
        passphrase=lambda: _secret(passphrase_file, "Identity passphrase"),
        trust=list(trust) or None,
        crl=list(crl),
        session_file=session_file,
        language=os.environ.get("PLI_LANGUAGE", "fr"),
    )


def _server_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--session-file",
        envvar="PLI_SESSION_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Where the session is kept (default ~/.config/pli/session.json).",
    )(function)
    return click.option(
        "--server",
        envvar="PLI_SERVER",
        default=None,
        help="The Pli server's URL (default: the last one logged in to).",
    )(function)


def _key_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--identity",
                envvar="PLI_IDENTITY",
                required=True,
                type=_FILE,
                help="Your PKCS#12 file (key and certificate): it never leaves this machine.",
            ),
            click.option(
                "--trust",
                envvar="PLI_TRUST",
                multiple=True,
                required=True,
                type=_FILE,
                help="Trust anchors (the operator CA's PEM): signers and recipients chain to it.",
            ),
            click.option(
                "--crl", envvar="PLI_CRL", multiple=True, type=_FILE, help="CRLs of the anchors."
            ),
            click.option(
                "--passphrase-file",
                type=_FILE,
                help="File whose first line opens the identity (else PLI_PASSPHRASE).",
            ),
        ]
    ):
        function = option(function)
    return function


def _read_body(body_file: str) -> str:
    if body_file == "-":
        try:
            return sys.stdin.read()
        except UnicodeDecodeError:
            raise ClientError("not_utf8", "the standard input is not UTF-8 text") from None
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
            f"the connection broke while uploading an attachment ({interrupted.cause.code}):"
            " nothing was sent, send again",
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
            f"cannot write attachments into {directory}: {error.strerror or error}",
        ) from None
    return directory


def _report_sent(result: SendResult) -> None:
    for finding in result.warnings:
        click.echo(f"warning: {finding.code.value}: {finding.message_en}", err=True)
    click.echo(f"sent {result.id} (thread {result.thread})")
    for delivery in result.deliveries:
        click.echo(f"  {delivery.recipient}: {delivery.state}")


# --- commands ------------------------------------------------------------------------------------
@click.command("login")
@click.argument("username", required=False)
@_server_options
@click.option(
    "--passphrase-file",
    type=_FILE,
    help="File whose first line is the account passphrase (else PLI_PASSPHRASE).",
)
@click.option("--code", default=None, help="The TOTP or recovery code, for scripts.")
def login_command(
    username: str | None,
    server: str | None,
    session_file: Path | None,
    passphrase_file: Path | None,
    code: str | None,
) -> None:
    """Log in (passphrase, then TOTP or recovery code); the session is kept for later commands."""
    client = _client(server, session_file)
    if not username:
        if not sys.stdin.isatty():
            raise ClientError("username_missing", "give USERNAME (your mailbox address)")
        username = str(click.prompt("Address"))
    passphrase = _secret(passphrase_file, "Passphrase")

    def second_factor() -> str:
        if code:
            return code
        if not sys.stdin.isatty():
            raise ClientError("code_missing", "give --code (TOTP or recovery code)")
        return str(click.prompt("Code (TOTP or recovery)", hide_input=True))

    result = client.login(username, passphrase, second_factor)
    click.echo(f"logged in as {result.username} ({result.method}) on {client.base_url}")


@click.command("logout")
@_server_options
def logout_command(server: str | None, session_file: Path | None) -> None:
    """End the session on the server and forget it here."""
    client = _client(server, session_file)
    client.logout()
    click.echo(f"logged out of {client.base_url}")


@click.command("mailboxes")
@_server_options
def mailboxes_command(server: str | None, session_file: Path | None) -> None:
    """The mailboxes you reach: yours, then those you are member or substitute of."""
    for mailbox in _client(server, session_file).mailboxes():
        state = "" if mailbox.active else " (inactive)"
        click.echo(
            f"{mailbox.address}  {mailbox.kind} {mailbox.part}  unread {mailbox.unread}{state}"
        )


@click.command("send")
@_server_options
@click.option("--from", "from_", required=True, help="The sending mailbox.")
@click.option("--to", "to", multiple=True, required=True, help="A recipient (repeat for more).")
@click.option("--subject", required=True, help="Pseudonymised: no patient name nor number.")
@click.option("--patient-ins", default=None, help="The patient's INS/NIR (or NISS).")
@click.option(
    "--patient-name",
    multiple=True,
    help="The patient's last or first name: the subject is checked not to contain it.",
)
@click.option(
    "--body-file",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="UTF-8 text of the message ('-': standard input).",
)
@click.option("--attach", multiple=True, type=_FILE, help="A file to attach (repeat for more).")
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
    """Check the subject and recipients, sign and encrypt here, then send."""
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


@click.command("inbox")
@_server_options
@click.option("--mailbox", default=None, help="Which mailbox (default: your own).")
@click.option(
    "--folder",
    type=click.Choice(["inbox", "sent", "archive", "trash"]),
    default="inbox",
    show_default=True,
)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
def inbox_command(
    server: str | None, session_file: Path | None, mailbox: str | None, folder: str, page: int
) -> None:
    """List a folder, newest first: metadata only (the subject is inside the envelope)."""
    listing = _client(server, session_file).inbox(mailbox, folder, page)
    if not listing.results:
        click.echo(f"no message in {folder}")
    for item in listing.results:
        mark = " " if item.read else "*"
        other = ", ".join(item.recipients) if folder == "sent" else item.from_
        click.echo(
            f"{mark} {item.id}  {item.received_at.astimezone():%Y-%m-%d %H:%M}"
            f"  {_printable_line(other)}  {item.size} B" + ("  (reply)" if item.in_reply_to else "")
        )
    if listing.has_next:
        click.echo(f"more: pli inbox --folder {folder} --page {listing.page + 1}")


def _show(message: ReadMessage, saved: list[Path]) -> None:
    signature = message.signature
    click.echo(f"From: {_printable_line(message.from_address)}")
    if message.sender:
        click.echo(f"Sender: {_printable_line(message.sender)}")
    click.echo(f"To: {_printable_line(', '.join(message.to))}")
    if message.cc:
        click.echo(f"Cc: {_printable_line(', '.join(message.cc))}")
    click.echo(f"Date: {message.date.isoformat()}")
    click.echo(f"Subject: {_printable_line(message.subject)}")
    if message.patient_id:
        click.echo(f"Patient: {message.patient_id}")
    click.echo(f"Message: {message.id} in {message.summary.mailbox} ({message.summary.folder})")
    click.echo(f"Signature: {signature.status}, signed by {', '.join(signature.signer_emails)}")
    click.echo(
        f"Signer: {_printable_line(signature.common_name or '-')}"
        f", national id {signature.national_id or '-'}"
    )
    click.echo(f"Certificate sha256: {signature.fingerprint}")
    if signature.signed_at:
        click.echo(f"Signed at: {signature.signed_at.isoformat()}")
    if not signature.revocation_checked:
        click.echo("warning: revocation_not_checked: no CRL covers the signer (--crl)", err=True)
    for index, attachment in enumerate(message.attachments):
        where = f" -> {saved[index]}" if saved else ""
        click.echo(
            f"Attachment: {_printable_line(attachment.filename)}"
            f" ({attachment.content_type}, {len(attachment.data)} bytes){where}"
        )
    for part in message.external_parts:
        click.echo(
            f"warning: external_part_unavailable: {_printable_line(part.filename)}"
            " is stored outside the message; this server cannot serve it yet",
            err=True,
        )
    click.echo("")
    click.echo(_printable_body(message.body))


@click.command("read")
@click.argument("message_id")
@_server_options
@click.option("--mailbox", default=None, help="Which of your mailboxes' copy, when several.")
@click.option(
    "--save-attachments",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the attachments into this directory (made if missing; never overwrites).",
)
@_key_options
def read_command(  # noqa: PLR0917 - click passes each option as a parameter
    message_id: str,
    server: str | None,
    session_file: Path | None,
    mailbox: str | None,
    save_attachments: Path | None,
    identity: Path,
    trust: tuple[Path, ...],
    crl: tuple[Path, ...],
    passphrase_file: Path | None,
) -> None:
    """Decrypt and verify a message here; print headers, signer and body; mark it read."""
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
    saved = message.save_attachments(directory) if directory else []
    _show(message, saved)


@click.command("reply")
@click.argument("message_id")
@_server_options
@click.option("--mailbox", default=None, help="Which of your mailboxes' copy, when several.")
@click.option(
    "--body-file",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="UTF-8 text of the answer ('-': standard input).",
)
@click.option("--attach", multiple=True, type=_FILE, help="A file to attach (repeat for more).")
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
    """Answer a message, to its sender, in its thread (the original is verified first)."""
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


MESSAGING_COMMANDS = [
    login_command,
    logout_command,
    mailboxes_command,
    send_command,
    inbox_command,
    read_command,
    reply_command,
]

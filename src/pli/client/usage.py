"""Usage errors of the ``pli`` messaging commands: French first, each with a stable code.

click writes its own usage errors ("Error: Missing option '--to'.") in
English, from its own gettext domain, without a code. The messaging commands
are used by health professionals in French, and scripted by practice
software that must tell one mistake from another (quality bar: "a clear,
translated error with a stable code"). So each of click's usage errors is
rebuilt here from what the exception carries (the parameter, the option's
name, the values), never from click's English text, and shown as::

    Utilisation : pli send [OPTIONS]
    Essayez « pli send --help » pour l'aide.
    pli: error: missing_option: option obligatoire absente : --to

with click's exit code for usage errors, 2. The codes:

- ``missing_option``, ``missing_argument``: a required parameter is absent;
- ``unknown_option`` (with the closest names), ``unknown_command``, ``missing_command``;
- ``option_value_missing``, ``option_takes_no_value``;
- ``bad_value``: a value its type refuses (a file that does not exist, a
  folder that is not one of the four, a page that is not a positive number);
- ``unexpected_argument``: words left over;
- ``usage_error``: anything else click may raise.

The parameter types below give their refusals in the same language, so a
``bad_value`` reads in French from end to end.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import click

from pli.client.i18n import N_, _
from pli.client.sealing import printable

__all__ = [
    "Choice",
    "CliError",
    "LocalizedCommand",
    "LocalizedGroup",
    "LocalizedOption",
    "LocalizedPath",
    "PositiveInteger",
    "UsageProblem",
    "localized",
    "option",
    "warn",
]


class CliError(Exception):
    """A problem the user can fix; ``code`` is stable like the domain errors'.

    ``pli``'s group shows it as ``pli: error: <code>: <detail>``, exit status 1.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def warn(code: str, detail: str) -> None:
    """``warning: <code>: <detail>``: the prefix and code stay, like ``pli: error:``."""
    click.echo(f"warning: {printable(code)}: {printable(detail)}", err=True)


class UsageProblem(click.UsageError):
    """A usage error in the command line's language, with a stable ``code``."""

    def __init__(self, code: str, detail: str, ctx: click.Context | None = None) -> None:
        super().__init__(detail, ctx)
        self.code = code
        self.detail = detail

    def format_message(self) -> str:
        return f"{self.code}: {self.detail}"

    def show(self, file: IO[Any] | None = None) -> None:
        to_stderr = file is None
        if self.ctx is not None:
            click.echo(self.ctx.get_usage(), file=file, err=to_stderr)
            click.echo(
                _("Essayez « {command} --help » pour l'aide.", command=self.ctx.command_path),
                file=file,
                err=to_stderr,
            )
        click.echo(f"pli: error: {self.format_message()}", file=file, err=to_stderr)


def _option_names(param: click.Parameter) -> str:
    return " / ".join(param.opts)


def _param_hint(param: click.Parameter | None, ctx: click.Context | None) -> str:
    if param is None:
        return "?"
    if isinstance(param, click.Argument):
        return param.human_readable_name
    return _option_names(param)


def _option_named(ctx: click.Context | None, name: str) -> click.Parameter | None:
    if ctx is None:
        return None
    return next((p for p in ctx.command.params if name in p.opts), None)


def localized(error: click.UsageError, ctx: click.Context | None = None) -> UsageProblem:
    """``error`` (raised by click while parsing) as a :class:`UsageProblem`."""
    if isinstance(error, UsageProblem):
        return error
    ctx = error.ctx or ctx
    if isinstance(error, click.MissingParameter):
        param = error.param
        if isinstance(param, click.Argument):
            return UsageProblem(
                "missing_argument",
                _("argument obligatoire absent : {name}", name=_param_hint(param, ctx)),
                ctx,
            )
        envvar = param.envvar if param is not None and isinstance(param.envvar, str) else None
        if envvar:
            detail = _(
                "option obligatoire absente : {option} (ou la variable {envvar})",
                option=_param_hint(param, ctx),
                envvar=envvar,
            )
        else:
            detail = _("option obligatoire absente : {option}", option=_param_hint(param, ctx))
        return UsageProblem("missing_option", detail, ctx)
    if isinstance(error, click.BadParameter):
        return UsageProblem(
            "bad_value",
            _(
                "valeur refusée pour {name} : {reason}",
                name=_param_hint(error.param, ctx),
                reason=error.message,
            ),
            ctx,
        )
    if isinstance(error, click.NoSuchOption):
        detail = _("option inconnue : {option}", option=error.option_name)
        if error.possibilities:
            detail += _(
                " ; vouliez-vous dire {names} ?", names=", ".join(sorted(error.possibilities))
            )
        return UsageProblem("unknown_option", detail, ctx)
    if isinstance(error, click.BadOptionUsage):
        option = _option_named(ctx, error.option_name)
        if isinstance(option, click.Option) and option.is_flag:
            return UsageProblem(
                "option_takes_no_value",
                _("l'option {option} ne prend pas de valeur", option=error.option_name),
                ctx,
            )
        return UsageProblem(
            "option_value_missing",
            _("l'option {option} attend une valeur", option=error.option_name),
            ctx,
        )
    # BadArgumentUsage and plain UsageError: no structure to rebuild from.
    return UsageProblem("usage_error", error.message, ctx)


def unknown_command(name: str, known: Sequence[str], ctx: click.Context) -> UsageProblem:
    """``pli NAME`` where no command has that name; the closest names suggested."""
    detail = _("commande inconnue : {name}", name=name)
    close = difflib.get_close_matches(name, known)
    if close:
        detail += _(" ; vouliez-vous dire {names} ?", names=", ".join(close))
    return UsageProblem("unknown_command", detail, ctx)


def unexpected(args: Sequence[str], ctx: click.Context) -> UsageProblem:
    """Words left over once every parameter took its own."""
    return UsageProblem("unexpected_argument", _("en trop : {args}", args=" ".join(args)), ctx)


# --- parameter types whose refusals are in the command line's language ---------------------------


class LocalizedPath(click.Path):
    """:class:`click.Path`, its refusals rebuilt from the file system, not from click's text."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            pass
        path = os.fsdecode(value)
        if not os.path.lexists(path):
            reason = _("« {path} » n'existe pas", path=path)
        elif not self.dir_okay and Path(path).is_dir():
            reason = _("« {path} » est un dossier, pas un fichier", path=path)
        elif not self.file_okay and not Path(path).is_dir():
            reason = _("« {path} » n'est pas un dossier", path=path)
        elif self.readable and not os.access(path, os.R_OK):
            reason = _("« {path} » ne peut pas être lu", path=path)
        elif self.writable and not os.access(path, os.W_OK):
            reason = _("« {path} » ne peut pas être écrit", path=path)
        else:
            reason = _("« {path} » ne convient pas", path=path)
        raise click.BadParameter(reason, ctx, param)


class Choice(click.Choice[str]):
    """:class:`click.Choice` of plain words, refused in the command line's language."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.choices:
            return value
        raise click.BadParameter(
            _(
                "« {value} » n'est pas l'un de : {choices}",
                value=value,
                choices=", ".join(str(c) for c in self.choices),
            ),
            ctx,
            param,
        )


class PositiveInteger(click.ParamType[int, Any]):
    """A whole number from 1 (a page), up to ``maximum`` when given."""

    name = "N"

    def __init__(self, maximum: int | None = None) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            number = self.parse(str(value), param, ctx)
        if number < 1:
            self.fail(_("{value} est inférieur à 1", value=number), param, ctx)
        if self.maximum is not None and number > self.maximum:
            self.fail(
                _("{value} dépasse {maximum}", value=number, maximum=self.maximum), param, ctx
            )
        return number

    def parse(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            self.fail(_("« {value} » n'est pas un nombre entier", value=value), param, ctx)
        return int(text)


class ByteSize(PositiveInteger):
    """A number of bytes from 1, in bytes or with a binary unit: ``500M``, ``5G`` (GiB)."""

    name = "SIZE"
    _UNITS: ClassVar[dict[str, int]] = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

    def parse(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = value.strip().upper()
        unit = text[-1:] if text[-1:] in self._UNITS else ""
        digits = text[: len(text) - len(unit)]
        if not (digits.isascii() and digits.isdigit()):
            self.fail(_("« {value} » n'est pas une taille (ex. 500M, 5G)", value=value), param, ctx)
        return int(digits) * self._UNITS[unit]


# --- commands whose help and usage errors follow PLI_LANGUAGE ------------------------------------


class _LocalizedHelp(click.Command):
    """Help translated when shown (``help=N_(…)``), not when imported; usage errors localized."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Leftover words are let through click's own check, to be refused below in
        # the command line's language (a group keeps its own: they are its command's).
        allowed = ctx.allow_extra_args
        ctx.allow_extra_args = True
        try:
            rest = super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise localized(error, ctx) from None
        finally:
            ctx.allow_extra_args = allowed
        if ctx.args and not allowed and not ctx.resilient_parsing:
            raise unexpected(ctx.args, ctx)
        return rest

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.help and not self.short_help:
            return click.Command(self.name, help=_(self.help)).get_short_help_str(limit)
        return super().get_short_help_str(limit)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        pieces = self.collect_usage_pieces(ctx)
        formatter.write_usage(ctx.command_path, " ".join(pieces), prefix=_("Utilisation :") + " ")

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.help:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(_(self.help))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        records = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            if param is help_option:
                # click's own text, in English whatever the language.
                record = (record[0], _("Afficher cette aide et quitter."))
            elif param.name == "version" and not isinstance(param, LocalizedOption):
                record = (record[0], _("Afficher la version et quitter."))
            records.append(record)
        if records:
            with formatter.section(_("Options")):
                formatter.write_dl(records)


class LocalizedCommand(_LocalizedHelp):
    """A messaging command: help and usage errors in the command line's language."""


class LocalizedGroup(_LocalizedHelp, click.Group):
    """The ``pli`` group: its help, its usage errors and an unknown command's name too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A group's leftover words are its command and that command's arguments.
        try:
            return click.Group.parse_args(self, ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise localized(error, ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            if type(error) is click.UsageError and error.ctx is ctx:
                # The group's own plain usage error: options, and no command after them.
                raise UsageProblem("missing_command", _("indiquez une commande"), ctx) from None
            raise

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as error:
            raise unknown_command(error.command_name, list(self.commands), ctx) from None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [
            (name, command)
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _command in commands)
            with formatter.section(_("Commandes")):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in commands])


#: click's names for a value, as the help shows them (``--body-file FILE``).
_METAVARS = {"TEXT": N_("TEXTE"), "FILE": N_("FICHIER"), "DIRECTORY": N_("DOSSIER")}


class LocalizedOption(click.Option):
    """An option whose help (``help=N_(…)``), ``[default: …]`` and value's name follow
    ``PLI_LANGUAGE``."""

    def make_metavar(self, ctx: click.Context) -> str:
        if self.metavar is None and self.type.get_metavar(param=self, ctx=ctx) is None:
            name = self.type.name.upper()
            if name in _METAVARS:
                return _(_METAVARS[name]) + ("..." if self.nargs != 1 else "")
        return super().make_metavar(ctx)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        extra = self.get_help_extra(ctx)
        items = []
        if "default" in extra:
            items.append(_("par défaut : {default}", default=extra["default"]))
        if "range" in extra:
            items.append(extra["range"])
        if "required" in extra:
            items.append(_("obligatoire"))
        text = _(self.help) if self.help else ""
        if items:
            extras = "[" + _(" ; ").join(items) + "]"
            text = f"{text}  {extras}" if text else extras
        return record[0], text


def option(
    *declarations: str, **attributes: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``click.option`` whose help, default and value's name follow ``PLI_LANGUAGE``."""
    return click.option(*declarations, cls=LocalizedOption, **attributes)

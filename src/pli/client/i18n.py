"""The texts of the ``pli`` commands and of the SDK: French first, English available.

As on the server (Django i18n), the source strings are French and are the
gettext msgids; English comes from the catalogue
``locale/en/LC_MESSAGES/pli-client.po``, committed with its compiled ``.mo``
(the wheel takes every file under ``src/pli``). This module uses the
standard library's :mod:`gettext` only: the client is a workstation package
and imports nothing of Django.

The language is the SDK's :attr:`pli.client.Client.language` (``"fr"`` by
default, also the ``Accept-Language`` of its requests) and, for the command
line, the ``PLI_LANGUAGE`` variable: ``en…`` is English, anything else
French, as :meth:`pli.policy.Finding.message` decides.

Three markers, which tests/test_client_i18n.py finds in the source to prove
that every one has its English translation:

- ``translate(language, "…", **params)``: in the SDK, with the client's language;
- ``_("…", **params)``: in the command line, with ``PLI_LANGUAGE``;
- ``N_("…")``: marked where it is written, translated later (click's help texts,
  which must follow ``PLI_LANGUAGE`` when the help is shown, not when imported).

The server's commands (``pli serve``, ``pli audit``, ``pli jobs``…, in
``pli.server``'s ``commands.py``, ``lifecycle_cli.py`` and ``*/cli.py``) use
this catalogue too, for their help, their own lines and their refusals; the
server's refusals they show (an invitation refused…) come from the server's
Django catalogue, in the same language (``setup_django`` activates it), as do
the reports the server composes (a job's summary, the audit verification's
report, an import's summary). A broken audit link's detail and a
configuration error's stay in English, like the server's log.

Parameters are named and formatted after translation (``str.format``), so a
translation may place them where its grammar wants. After adding or changing a
text, update the catalogue and compile it::

    xgettext -L Python --from-code=UTF-8 --keyword=_ --keyword=N_ --keyword=translate:2 \\
        --no-wrap --no-location --sort-output -o /tmp/pli-client.pot src/pli/client/*.py \\
        src/pli/server/commands.py src/pli/server/lifecycle_cli.py src/pli/server/*/cli.py
    msgmerge --update --backup=none --no-wrap --no-location --sort-output --no-fuzzy-matching \\
        src/pli/client/locale/en/LC_MESSAGES/pli-client.po /tmp/pli-client.pot
    # translate the new entries, then:
    msgfmt --check -o src/pli/client/locale/en/LC_MESSAGES/pli-client.mo \\
        src/pli/client/locale/en/LC_MESSAGES/pli-client.po
"""

from __future__ import annotations

import functools
import gettext
import os
from pathlib import Path

__all__ = [
    "DOMAIN",
    "LOCALE_DIR",
    "N_",
    "_",
    "cli_language",
    "is_english",
    "translate",
]

DOMAIN = "pli-client"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"


def is_english(language: str | None) -> bool:
    """``"en"``, ``"en-GB"``, ``"en_US.UTF-8"``… are English; anything else is French."""
    return bool(language) and str(language).strip().lower().startswith("en")


@functools.cache
def _english() -> gettext.GNUTranslations:
    # No fallback: a wheel without its catalogue is a packaging bug, which must show
    # at once (tests/test_client_i18n.py) rather than leave English users in French.
    translations = gettext.translation(DOMAIN, LOCALE_DIR, languages=["en"])
    assert isinstance(translations, gettext.GNUTranslations)  # noqa: S101 - fallback=False
    return translations


def translate(language: str | None, message: str, /, **params: object) -> str:
    """``message`` (French, the msgid) in ``language``, then formatted with ``params``."""
    text = _english().gettext(message) if is_english(language) else message
    return text.format(**params) if params else text


def cli_language() -> str:
    """The command line's language: ``PLI_LANGUAGE``, French by default."""
    return os.environ.get("PLI_LANGUAGE") or "fr"


def _(message: str, /, **params: object) -> str:
    """``message`` in the command line's language (read at each call: tests change it)."""
    return translate(cli_language(), message, **params)


def N_(message: str) -> str:  # noqa: N802 - gettext's conventional name for a deferred text
    """Marks a text for the catalogue; it is translated where it is shown."""
    return message

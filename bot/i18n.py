"""Languages: gettext catalogs (managed with Babel) and CLDR formatting, per reader.

Every message a person sees is marked in the code with ``t._("…")`` or
``t.ngettext("…", "…", n)`` (``t`` is the reader's :class:`Translator`), with named
placeholders (``{filename}``) filled in after translation. ``pybabel extract`` (configured in
``babel.cfg``) collects them into ``bot/locale/parcel.pot``; the translations live in
``bot/locale/<code>/LC_MESSAGES/parcel.po`` and are compiled in memory when first used (no
``.mo`` file is committed or needed). English is the source language: its text is the
``msgid`` itself.

Nothing translated is ever stored: the store keeps facts (states, codes, numbers) and each
message is rendered for its reader. For right-to-left languages every value put into a
sentence (a file name, a person's name, a number) is isolated with FSI … PDI, so a Latin file
name does not scramble the sentence and a hostile name cannot reorder it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gettext
import html
import io
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from babel import Locale
from babel.dates import format_datetime
from babel.lists import format_list
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "parcel"
SOURCE_LANGUAGE = "en"
# Every language Parcel ships, the source language first.
SHIPPED: tuple[str, ...] = ("en", "de", "fr", "es", "it", "nl", "pt", "ar")
RIGHT_TO_LEFT = frozenset({"ar"})

# The list styles CLDR has (babel.lists.format_list): "a, b and c", "a, b or c", ...
ListStyle = Literal["standard", "standard-short", "or", "or-short", "unit", "unit-short",
                    "unit-narrow"]

# Unicode bidirectional isolates (UAX #9): FIRST STRONG ISOLATE ... POP DIRECTIONAL ISOLATE.
FSI = "\u2068"
PDI = "\u2069"


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "mark, translate later"
    """Mark a string for extraction without translating it (tables built at import time)."""
    return message


# Decimal size units (SI, as the size limits in the configuration are written).
_SIZE_UNITS = (N_("{value} KB"), N_("{value} MB"), N_("{value} GB"), N_("{value} TB"),
               N_("{value} PB"), N_("{value} EB"))


class Html(str):
    """A fragment that is already HTML (escaped or built by Parcel), not to be escaped again."""

    __slots__ = ()


@dataclass(frozen=True)
class Rich:
    """A placeholder value that reads differently in plain text and in HTML (bold, code)."""

    text: str
    html: str

    @classmethod
    def bold(cls, text: str) -> Rich:
        """``text``, in bold in HTML."""
        return cls(text, f"<b>{html.escape(text, quote=True)}</b>")

    @classmethod
    def code(cls, text: str) -> Rich:
        """``text`` (a command), as code in HTML."""
        return cls(text, f"<code>{html.escape(text, quote=True)}</code>")


class UnknownLanguage(ValueError):
    """A language code Parcel does not ship."""


def own_name(code: str) -> str:
    """A language's name in that language ("Deutsch", "Français", "العربية")."""
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def _compile(code: str) -> gettext.NullTranslations:
    """The catalog of ``code``, compiled from its ``.po`` in memory (fuzzy entries left out)."""
    if code == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    path = LOCALE_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=code, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


@functools.cache
def _catalog(code: str) -> gettext.NullTranslations:
    return _compile(code)


def load_all(codes: tuple[str, ...] = SHIPPED) -> None:
    """Compile the catalogs of ``codes`` now (at start-up), so a broken one fails early."""
    for code in codes:
        _catalog(code)


def check_language(code: object) -> str:
    """``code`` if Parcel ships it; raises :class:`UnknownLanguage` otherwise."""
    if not isinstance(code, str) or code not in SHIPPED:
        raise UnknownLanguage(f"{code!r} is not a shipped language (shipped: "
                              f"{', '.join(SHIPPED)})")
    return code


def check_timezone(name: object) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; raises ``ValueError`` for anything else."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")):
        raise ValueError(f"{name!r} is not an IANA time zone name (like Europe/Berlin)")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone name (like Europe/Berlin)") from exc


class Translator:
    """Everything one reader's text needs: their language's catalog, locale and time zone."""

    def __init__(self, code: str, timezone: str = "UTC") -> None:
        self.code = check_language(code)
        self.timezone = timezone
        self.locale = Locale.parse(code)
        self.rtl = code in RIGHT_TO_LEFT
        self._zone = check_timezone(timezone)
        self._catalog = _catalog(code)

    def __repr__(self) -> str:
        return f"Translator({self.code!r}, {self.timezone!r})"

    # -- messages -------------------------------------------------------------------------

    def _(self, message: str, /, **values: Any) -> str:
        """``message`` in this language, placeholders filled in (plain text)."""
        return self._fill(self._catalog.gettext(message), values, rich=False)

    def known(self, message: str) -> str:
        """``message`` translated if the catalog has it, else as it is; nothing is filled in
        (a stored fact such as a refusal reason, which may be a catalog message or not)."""
        return self._catalog.gettext(message) if message else message

    def ngettext(self, singular: str, plural: str, n: int, /, **values: Any) -> str:
        """The plural form for ``n`` in this language (``{n}`` is ``n``, formatted)."""
        values.setdefault("n", self.number(n))
        return self._fill(self._catalog.ngettext(singular, plural, n), values, rich=False)

    def pair(self, message: str, /, **values: Any) -> tuple[str, Html]:
        """``message`` as (plain text, HTML): the template escaped, values escaped unless
        they are :class:`Html`, a :class:`Rich` value in its form for each."""
        template = self._catalog.gettext(message)
        return self._fill(template, values, rich=False), self._fill(template, values, rich=True)

    def npair(self, singular: str, plural: str, n: int, /, **values: Any) -> tuple[str, Html]:
        """:meth:`ngettext` as (plain text, HTML), like :meth:`pair`."""
        values.setdefault("n", self.number(n))
        template = self._catalog.ngettext(singular, plural, n)
        return self._fill(template, values, rich=False), self._fill(template, values, rich=True)

    def _fill(self, template: str, values: dict[str, Any], *, rich: bool) -> Any:
        shown = {name: self._value(value, rich) for name, value in values.items()}
        if rich:
            return Html(html.escape(template, quote=False).format(**shown))
        return template.format(**shown)

    def _value(self, value: Any, rich: bool) -> str:
        if isinstance(value, Rich):
            text = value.html if rich else value.text
        elif isinstance(value, Html):
            text = value if rich else html.unescape(value)
        else:
            text = str(value)
            if rich:
                text = html.escape(text, quote=True)
        return self.isolate(text)

    def isolate(self, text: str) -> str:
        """``text`` in a bidirectional isolate when this language is written right to left."""
        return f"{FSI}{text}{PDI}" if self.rtl and text else text

    # -- facts ----------------------------------------------------------------------------

    def number(self, value: float) -> str:
        """A number in this locale ("1.234" in German, "1,234" in English)."""
        return format_decimal(value, locale=self.locale)

    def size(self, n: int) -> str:
        """A file size in decimal units in this locale: "4.1 KB" (en), "4,1 kB" (de)."""
        if n < 0:
            raise ValueError(f"a size cannot be negative: {n}")
        if n < 1000:
            return self.ngettext("{n} byte", "{n} bytes", n)
        value = float(n)
        for index, unit in enumerate(_SIZE_UNITS):
            value /= 1000
            rounded = round(value, 1)
            if rounded < 1000 or index == len(_SIZE_UNITS) - 1:
                return self._(unit, value=format_decimal(rounded, "0.#", locale=self.locale))
        raise AssertionError("unreachable")  # pragma: no cover

    def datetime(self, ts: float) -> str:
        """A moment in the configured time zone, in this language's pattern."""
        moment = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
        # Translators: a CLDR date pattern (yyyy year, MM month, dd day, HH:mm time).
        pattern = self._("yyyy-MM-dd HH:mm")
        return format_datetime(moment, pattern, tzinfo=self._zone, locale=self.locale)

    def short_datetime(self, ts: float) -> str:
        """Day, short month and time without the year, in the configured zone ("24 Nov 21:05"),
        for a narrow table cell."""
        moment = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
        # Translators: a CLDR date pattern for a narrow table cell, without the year.
        # d day, MMM short month name, HH:mm time; the first space is kept unbroken.
        pattern = self._("d MMM HH:mm")
        return format_datetime(moment, pattern, tzinfo=self._zone, locale=self.locale)

    def zone(self, ts: float) -> str:
        """The short name of the configured time zone at ``ts`` ("UTC", "MEZ", "UTC+1")."""
        if self.timezone == "UTC":
            return "UTC"
        moment = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
        name = format_datetime(moment, "z", tzinfo=self._zone, locale=self.locale)
        if name[:1] not in "+-":
            return name
        # No short name in this locale (CLDR gives "+0100"): the offset, as people write it.
        offset = moment.astimezone(self._zone).utcoffset() or _dt.timedelta()
        minutes = int(offset.total_seconds() // 60)
        hours, rest = divmod(abs(minutes), 60)
        return f"UTC{'-' if minutes < 0 else '+'}{hours}" + (f":{rest:02d}" if rest else "")

    def language_name(self, code: str) -> str:
        """A language's name in this language, as it reads in a sentence ("français")."""
        return Locale.parse(code).get_display_name(self.locale) or code

    def joined(self, items: list[str]) -> str:
        """Items separated by this language's list comma ("a, b"; Arabic "a، b"), no "and"."""
        pattern = self.locale.list_patterns["standard"]["start"]
        result = items[0] if items else ""
        for item in items[1:]:
            result = pattern.format(result, item)
        return result

    def list(self, items: list[str], style: ListStyle = "standard") -> str:
        """Items joined the way this language lists them ("a, b and c", "a, b und c")."""
        return format_list([self.isolate(item) for item in items], style=style,
                           locale=self.locale)


@functools.cache
def translator(code: str, timezone: str = "UTC") -> Translator:
    """The (shared) translator for a language and time zone."""
    return Translator(code, timezone)


ENGLISH = translator(SOURCE_LANGUAGE)

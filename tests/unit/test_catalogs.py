"""The translation catalogs: complete, not fuzzy, and with the English placeholders."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bot import i18n

ROOT = Path(__file__).resolve().parents[2]
TRANSLATED = [code for code in i18n.SHIPPED if code != i18n.SOURCE_LANGUAGE]
# As in the README's pybabel commands: Babel's default keywords plus Translator.pair/npair.
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "pair": None,
            "npair": (1, 2)}


def _extracted() -> set[str | tuple[str, str]]:
    """Every message marked in the code now (what `pybabel extract` would find)."""
    messages: set[str | tuple[str, str]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT / "bot"), method_map=[("**.py", "python")], keywords=KEYWORDS,
    ):
        messages.add(message if isinstance(message, str) else (message[0], message[1]))
    return messages


def _catalog(code: str):  # noqa: ANN202 - babel's Catalog
    path = ROOT / "bot" / "locale" / code / "LC_MESSAGES" / "parcel.po"
    with path.open("rb") as handle:
        return read_po(handle, locale=code)


def _fields(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_shipped_languages_each_have_a_catalog() -> None:
    """Every shipped language but English (the source) has a catalog file."""
    catalogs = (ROOT / "bot" / "locale").glob("*/LC_MESSAGES/parcel.po")
    found = sorted(path.parent.parent.name for path in catalogs)
    assert found == sorted(TRANSLATED)


@pytest.mark.parametrize("code", TRANSLATED)
def test_catalog_translates_every_message_in_the_code(code: str) -> None:
    """Each catalog has a translation (not fuzzy, not empty) of every message the code marks."""
    catalog = _catalog(code)
    ids = {m.id if isinstance(m.id, str) else tuple(m.id) for m in catalog if m.id}
    missing = sorted(map(str, _extracted() - ids))
    assert missing == [], f"{code}: run pybabel extract/update and translate: {missing}"
    fuzzy = [m.id for m in catalog if m.id and m.fuzzy]
    assert fuzzy == []
    empty = [m.id for m in catalog if m.id and (
        not m.string if isinstance(m.string, str) else not all(m.string))]
    assert empty == []


@pytest.mark.parametrize("code", TRANSLATED)
def test_translations_keep_the_english_placeholders(code: str) -> None:
    """A translation uses exactly the named placeholders of its English message, in every
    plural form."""
    wrong = []
    for message in _catalog(code):
        if not message.id:
            continue
        if isinstance(message.id, str):
            pairs = [(message.id, message.string)]
        else:
            pairs = [(message.id[1], form) for form in message.string]
        wrong += [(english, text) for english, text in pairs if _fields(english) != _fields(text)]
    assert wrong == []


@pytest.mark.parametrize(("code", "forms"), [("de", 2), ("fr", 3), ("ar", 6)])
def test_catalogs_have_their_languages_plural_forms(code: str, forms: int) -> None:
    """Plural forms follow CLDR: German two, French three (millions), Arabic six."""
    assert _catalog(code).num_plurals == forms


def test_every_catalog_compiles() -> None:
    """All catalogs compile in memory (as at start-up)."""
    i18n.load_all()

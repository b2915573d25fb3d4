"""Rendering per reader: the same facts in several languages (expectations written out here,
never produced by the catalog under test), and right-to-left isolation."""

from __future__ import annotations

from typing import Any

import pytest

from bot import render
from bot.attachments import redact
from bot.attachments.model import Direction, Offer, OfferState
from bot.config import DirectionPolicy
from bot.i18n import FSI, PDI, Translator, translator

S = OfferState
C2A = Direction.CUSTOMER_TO_AGENT
A2C = Direction.AGENT_TO_CUSTOMER
BERLIN = "Europe/Berlin"
# 2023-11-14 22:13:20 UTC, 23:13 in Berlin (winter time).
MOMENT = 1_700_000_000.0


def make_offer(**overrides: Any) -> Offer:
    base: dict[str, Any] = dict(
        id=7, session_id=3, direction=C2A, sender="@carol:hs", sender_name="Carol",
        source_room="!c:hs", source_event_id="$up", msgtype="m.file", filename="report.pdf",
        declared_mimetype="application/pdf", declared_size=1_234_567, state=S.OFFERED,
        created_at=MOMENT, updated_at=MOMENT, mimetype="application/pdf", size=1_234_567,
        number=2,
    )
    base.update(overrides)
    return Offer(**base)


def iso(text: str) -> str:
    """``text`` in a bidirectional isolate, as a right-to-left reader's values are."""
    return f"{FSI}{text}{PDI}"


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("en", "⬆️ report.pdf · PDF document · 1.2 MB — waiting for the agent to accept (offer #2)"),
        ("de", "⬆️ report.pdf · PDF-Dokument · 1,2 MB — wartet auf Annahme durch den Mitarbeiter "
               "(Angebot #2)"),
        ("fr", "⬆️ report.pdf · document PDF · 1,2 Mo — en attente d'acceptation par l'agent "
               "(offre n° 2)"),
        ("es", "⬆️ report.pdf · documento PDF · 1,2 MB — esperando a que el agente lo acepte "
               "(oferta n.º 2)"),
        ("it", "⬆️ report.pdf · documento PDF · 1,2 MB — in attesa che l'operatore lo accetti "
               "(offerta n. 2)"),
        ("nl", "⬆️ report.pdf · PDF-document · 1,2 MB — wacht tot de medewerker het accepteert "
               "(aanbod #2)"),
        ("pt", "⬆️ report.pdf · documento PDF · 1,2 MB — aguardando o atendente aceitar "
               "(oferta n.º 2)"),
        ("ar", f"⬆️ {iso('report.pdf')} · {iso('مستند PDF · ' + iso('1.2') + ' ميغابايت')} — "
               f"بانتظار قبول الموظف (العرض رقم {iso('2')})"),
    ],
)
def test_status_line_waiting_in_each_language(code: str, shown: str) -> None:
    """The sender's waiting status line: kind, size (decimal comma where the locale has one)
    and the sentence, in the reader's language."""
    assert render.status_line(make_offer(), t=translator(code))["body"] == shown


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("en", "🚫 report.pdf from Carol (offer #2) — declined by Alice (support), "
               "2023-11-14 23:13 UTC+1; it was not delivered"),
        ("de", "🚫 report.pdf von Carol (Angebot #2) — abgelehnt von Alice (support), "
               "14.11.2023 23:13 MEZ; die Datei wurde nicht zugestellt"),
        ("fr", "🚫 report.pdf de Carol (offre n° 2) — refusée par Alice (support), "
               "14/11/2023 23:13 UTC+1\u00a0; le fichier n'a pas été remis"),
        ("nl", "🚫 report.pdf van Carol (aanbod #2) — geweigerd door Alice (support), "
               "14-11-2023 23:13 CET; het bestand is niet afgeleverd"),
    ],
)
def test_decided_card_in_the_readers_time_zone(code: str, shown: str) -> None:
    """A decided card names who decided and when, in the configured zone, the reader's date
    pattern and the zone's name in the reader's locale."""
    offer = make_offer(state=S.DECLINED, decided_at=MOMENT)
    card = render.offer_card(offer, "✅", "❌", decider="Alice (support)",
                             t=translator(code, BERLIN))
    assert card["body"] == shown


@pytest.mark.parametrize(
    ("code", "pending", "shown"),
    [
        ("en", 1, "You ended the chat. 1 pending file was not delivered."),
        ("en", 3, "You ended the chat. 3 pending files were not delivered."),
        ("de", 1, "Sie haben das Gespräch beendet. 1 ausstehende Datei wurde nicht zugestellt."),
        ("de", 3, "Sie haben das Gespräch beendet. 3 ausstehende Dateien wurden nicht "
                  "zugestellt."),
        ("fr", 1, "Vous avez mis fin à la discussion. 1 fichier en attente n'a pas été remis."),
        ("fr", 2, "Vous avez mis fin à la discussion. 2 fichiers en attente n'ont pas été remis."),
        ("ar", 1, f"لقد أنهيت المحادثة. لم يُسلَّم ملف معلّق واحد ({iso('1')})."),
        ("ar", 2, f"لقد أنهيت المحادثة. لم يُسلَّم ملفان معلّقان ({iso('2')})."),
        ("ar", 3, f"لقد أنهيت المحادثة. لم تُسلَّم {iso('3')} ملفات معلّقة."),
        ("ar", 11, f"لقد أنهيت المحادثة. لم يُسلَّم {iso('11')} ملفًا معلّقًا."),
        ("ar", 100, f"لقد أنهيت المحادثة. لم يُسلَّم {iso('100')} ملف معلّق."),
    ],
)
def test_closing_words_use_real_plural_forms(code: str, pending: int, shown: str) -> None:
    """"1 file" / "2 files" as each language counts, Arabic's one, two, few, many, other."""
    notice = render.session_closed("ended", None, you=True, pending=pending, t=translator(code))
    assert notice.body == shown


@pytest.mark.parametrize(
    ("code", "size", "shown"),
    [
        ("en", 1, "1 byte"), ("en", 999, "999 bytes"), ("en", 1_700, "1.7 KB"),
        ("de", 1, "1 Byte"), ("de", 1_700, "1,7 kB"), ("de", 25_000_000, "25 MB"),
        ("fr", 1, "1 octet"), ("fr", 0, "0 octet"), ("fr", 2, "2 octets"),
        ("fr", 1_700, "1,7 ko"), ("fr", 3_400_000_000, "3,4 Go"),
        ("es", 1_700, "1,7 kB"), ("pt", 1_700, "1,7 kB"),
        ("ar", 1_700, f"{iso('1.7')} كيلوبايت"),
    ],
)
def test_sizes_follow_the_locale(code: str, size: int, shown: str) -> None:
    """Sizes in decimal units with the locale's decimal sign and unit names."""
    assert translator(code).size(size) == shown


def test_panel_in_german_with_the_time_zone() -> None:
    """The pinned panel in German: counts, kind, size, direction, state and Berlin time."""
    offers = [make_offer(), make_offer(id=8, number=3, direction=A2C, filename="a.png",
                                       mimetype="image/png", size=1_700, state=S.ACCEPTED)]
    panel = render.activity_panel(offers, C2A, t=translator("de", BERLIN))
    assert panel.body == (
        "📋 Dateien in diesem Gespräch: 2 (1 wartet)\n"
        "⬆️ #2 report.pdf · PDF-Dokument · 1,2 MB · gesendet · wartet · 14.11.2023 23:13\n"
        "📎 #3 a.png · PNG-Bild · 1,7 kB · empfangen · angenommen · 14.11.2023 23:13"
    )


def test_attachments_table_in_german_with_the_time_zone() -> None:
    """!attachments in German: the two-column table (name and facts; state and a short Berlin
    time, day and month kept together) and the text body's lines."""
    offers = [make_offer(state=S.ACCEPTED),
              make_offer(id=8, number=3, direction=A2C, filename="a.png", mimetype="image/png",
                         size=1_700, state=S.DECLINED, sender_name="Alice")]
    log = render.attachment_log(offers, C2A, t=translator("de", BERLIN))
    assert log.body == (
        "Anhänge (2):\n"
        "#2 gesendet: report.pdf · PDF-Dokument · 1,2 MB · von Carol · angenommen · "
        "14.11.2023 23:13\n"
        "#3 empfangen: a.png · PNG-Bild · 1,7 kB · von Alice · abgelehnt · 14.11.2023 23:13")
    assert log.html == (
        "<b>Anhänge (2)</b><table><thead><tr><th>Datei</th><th>Status (MEZ)</th></tr></thead>"
        "<tbody><tr><td><b>#2</b> report.pdf<br>gesendet · PDF-Dokument · 1,2 MB · von Carol"
        "</td><td>angenommen<br>14.\u00a0Nov. 23:13</td></tr>"
        "<tr><td><b>#3</b> a.png<br>empfangen · PNG-Bild · 1,7 kB · von Alice"
        "</td><td>abgelehnt<br>14.\u00a0Nov. 23:13</td></tr></tbody></table>")


@pytest.mark.parametrize(
    ("code", "ts", "shown"),
    [("en", MOMENT, "14 Nov 22:13"), ("de", MOMENT, "14. Nov. 22:13"),
     ("fr", MOMENT, "14 nov. 22:13"), ("it", 1_694_000_000.0, "6 set 11:33"),
     ("ar", MOMENT, "14 نوفمبر 22:13")],
)
def test_short_time_in_the_readers_language(code: str, ts: float, shown: str) -> None:
    """The table's day, month and time, without the year, as the reader's language writes a
    short month."""
    assert render.short_time(ts, t=translator(code)) == shown


@pytest.mark.parametrize(
    ("code", "also_open", "note"),
    [
        ("de", [3], "Dieser Kunde hat noch ein weiteres offenes Gespräch: #3."),
        ("de", [3, 9], "Dieser Kunde hat noch weitere offene Gespräche: #3, #9."),
        ("fr", [3], "Ce client a aussi une autre discussion ouverte\u00a0: #3."),
        ("ar", [3, 9], f"لدى هذا العميل أيضًا محادثتان أخريان مفتوحتان: {iso('#3 و#9')}."),
    ],
)
def test_agents_are_told_of_the_customers_other_chats(
    code: str, also_open: list[int], note: str
) -> None:
    """A customer's second chat: the agent room's first message names the other open chats,
    one or several, in the agents' language."""
    message = render.session_opened_for_agents("Carol", "@carol:hs", 12, also_open,
                                               t=translator(code))
    assert message.body.splitlines()[-1] == note


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("de", "Der Raum des Support-Teams für dieses Gespräch wurde geschlossen; kein "
               "Mitarbeiter kann mehr lesen, was Sie hier schreiben. Dieses Gespräch ist beendet. "
               "Um wieder mit uns zu sprechen, beginnen Sie ein neues Gespräch mit @parcel:hs."),
        ("es", "La sala del equipo de asistencia para este chat se cerró, así que ningún agente "
               "puede leer ya lo que escriba aquí. Este chat está cerrado. "),
    ],
)
def test_customer_told_when_the_agents_room_is_gone(code: str, shown: str) -> None:
    """The bot removed from the agents' room: the customer is told, in the chat's language,
    that nobody reads it any more and how to start again."""
    notice = render.session_closed("bot_removed_from_agents", None, you=False, pending=0,
                                   bot_id="@parcel:hs", t=translator(code))
    assert notice.body.startswith(shown)


@pytest.mark.parametrize(
    ("code", "found", "recipient", "shown"),
    [
        ("de", 2, "the agent", "🔒 2 Kartennummern in Ihrer Nachricht wurden vor dem Mitarbeiter "
                               "verborgen (nur die letzten vier Ziffern waren zu sehen)."),
        ("fr", 1, "the customer", "🔒 1 numéro de carte dans votre message a été masqué pour le "
                                  "client (seuls les quatre derniers chiffres étaient visibles)."),
    ],
)
def test_card_numbers_hidden_in_text_in_the_senders_language(
    code: str, found: int, recipient: str, shown: str
) -> None:
    """The sender of a message with card numbers is told, in their language and with the
    plural form for the count, that the numbers were hidden from the other side."""
    body = render.card_numbers_hidden_in_text(found, recipient, t=translator(code)).body
    assert body.startswith(shown)


def test_card_numbers_on_the_status_line_and_in_a_refusal_reason() -> None:
    """A redacted file's status line says how many numbers were hidden (German), and a file
    that could not be searched is refused with the reason in the reader's words (Spanish),
    its English detail translated when it is one of Parcel's sentences."""
    offer = make_offer(state=S.ACCEPTED, redacted=1)
    assert render.status_line(offer, t=translator("de"))["body"] == (
        "📎 report.pdf — vom Mitarbeiter empfangen (1 Kartennummer wurde verborgen)")
    check = redact.apply_policy(
        redact.CardCheck(searched=True, unchecked="recordings are not searched for card numbers"),
        DirectionPolicy(max_size=1_000_000, allowed_types=(), blocked_types=(),
                        uninspectable="refuse"))
    assert check.refusal is not None and check.refusal.facts is not None
    assert check.refusal.reason == (
        "it could not be checked for payment card numbers (recordings are not searched for "
        "card numbers), and files that cannot be checked are not passed on")
    assert check.refusal.facts.render(translator("es")) == (
        "el archivo no se pudo revisar en busca de números de tarjeta de pago (las grabaciones "
        "no se revisan en busca de números de tarjeta), y los archivos que no se pueden revisar "
        "no se transmiten")


def test_help_in_german_shows_the_aliases() -> None:
    """!help in German lists each English command with its German alias."""
    text = render.help_text(t=translator("de"), language_command=True).body
    assert text.splitlines() == [
        "Befehle:",
        "!help / !hilfe — diese Hilfe anzeigen",
        "!attachments / !anhänge — die in diesem Gespräch gesendeten und empfangenen Dateien "
        "auflisten",
        "!accept N / !annehmen N — Angebot Nummer N annehmen (wie eine Reaktion mit ✅)",
        "!decline N / !ablehnen N — Angebot Nummer N ablehnen (wie eine Reaktion mit ❌)",
        "!end / !ende — dieses Gespräch beenden",
        "!language / !sprache — die Sprachen dieses Gesprächs auflisten oder wechseln: "
        "!language es",
    ]


@pytest.mark.parametrize(
    ("typed", "code", "command"),
    [("annehmen", "de", "accept"), ("ACCEPT", "de", "accept"), ("refuser", "fr", "decline"),
     ("idioma", "es", "language"), ("annehmen", "fr", "annehmen"), ("help", "ar", "help"),
     ("قبول", "ar", "accept"), ("Anhänge", "de", "attachments")],
)
def test_command_words(typed: str, code: str, command: str) -> None:
    """English commands work in every language; an alias only in its own."""
    assert render.command_word(typed, code) == command


def test_language_choices_each_in_its_own_language() -> None:
    """!language lists the choices by their own names, the sentence in the reader's."""
    body = render.language_choices("es", ["de", "en", "es", "fr", "ar"],
                                   t=translator("es")).body
    assert body.splitlines() == [
        "Este chat está en español. Para cambiar, escriba !language y un código:",
        "!language de — Deutsch",
        "!language en — English",
        "!language es — Español",
        "!language fr — Français",
        "!language ar — العربية",
    ]
    assert render.language_switched(t=translator("es")).body == "Este chat está ahora en español."
    assert render.language_unknown("xx", ["de", "en"], t=translator("de")).body == (
        "xx ist keine Sprache dieses Gesprächs. Wählen Sie eine von: de und en")


def test_arabic_isolates_a_hostile_name_and_file_name() -> None:
    """A right-to-left reader gets every name, file name and number in its own isolate, so
    a Latin file name or a name with bidi controls cannot reorder the sentence."""
    hostile = "Eve \u202eevil"
    notice = render.refusal_notice_for_agents(hostile, "invoice.pdf", "it is empty",
                                              t=translator("ar"))
    assert notice.body == (
        f"⛔ حاول {iso('Eve evil')} إرسال {iso('invoice.pdf')}: رُفض — {iso('الملف فارغ')}")


def test_html_escapes_translated_text_and_values() -> None:
    """The HTML form escapes the translation and the values; bold and code stay markup."""
    offer = make_offer(filename="<b>x</b>.pdf", sender_name="A&B")
    card = render.offer_card(offer, "✅", "❌", t=translator("fr"))
    assert card["formatted_body"].startswith(
        "📥 <b>Accepter &lt;b&gt;x&lt;_b&gt;.pdf de A&amp;B\u00a0?</b><br>")
    assert "<code>!accept 2</code>" in card["formatted_body"]


def test_default_wording_is_translated_but_an_admins_is_not() -> None:
    """Parcel's own welcome is a catalog message; an admin's own text stays as written."""
    t = translator("it")
    default = ("Hello! You are connected to our support team. Files you send are offered to the "
               "agent, who accepts them before they see them.")
    assert t.known(default).startswith("Salve! È in contatto con il nostro team di assistenza.")
    assert t.known("Willkommen bei Acme!") == "Willkommen bei Acme!"
    assert render.closed_room_name("Chat con Carol (n. 3)", t=t) == "[chiusa] Chat con Carol (n. 3)"
    assert render.closed_room_name("[chiusa] x", t=t) == "[chiusa] x"


def test_unknown_time_zone_or_language_is_refused() -> None:
    """A translator needs a shipped language and an IANA zone."""
    with pytest.raises(ValueError, match="not a shipped language"):
        Translator("tlh")
    with pytest.raises(ValueError, match="not an IANA time zone"):
        Translator("de", "Middle/Earth")


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("en", "⛔ big.zip was not sent: it is larger than the limit of 25 MB"),
        ("de", "⛔ big.zip wurde nicht gesendet: die Datei ist größer als die Grenze von 25 MB"),
        ("fr", "⛔ big.zip n'a pas été envoyé\u00a0: le fichier dépasse la limite de 25 Mo"),
        ("es", "⛔ big.zip no se envió: el archivo supera el límite de 25 MB"),
    ],
)
def test_refusal_reason_from_stored_facts(code: str, shown: str) -> None:
    """A refusal is stored as facts (message and values) and told in the reader's language,
    the limit in the reader's units."""
    from bot.attachments import policy
    from bot.config import DirectionPolicy

    verdict = policy.too_large(30_000_000, DirectionPolicy(max_size=25_000_000,
                                                           allowed_types=(), blocked_types=(),
                                                           block_executables=True))
    assert verdict.facts is not None
    stored = verdict.facts.to_json()
    notice = render.rejection_notice("big.zip", verdict.reason, facts=stored, t=translator(code))
    assert notice.body == shown


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("en", "it is a Windows program (application/x-dosexec), and this type is not allowed"),
        ("de", "die Datei ist vom Typ Programm (Windows) (application/x-dosexec), und dieser Typ "
               "ist nicht erlaubt"),
        ("it", "il file è di tipo programma (Windows) (application/x-dosexec) e questo tipo non "
               "è consentito"),
    ],
)
def test_file_kind_in_a_reason(code: str, shown: str) -> None:
    """A file kind in a reason comes from the detected type, in the reader's words (English
    with its article)."""
    from bot.attachments.reasons import Reason, kind

    reason = Reason("it is {kind} ({mimetype}), and this type is not allowed",
                    {"kind": kind("application/x-dosexec", article=True),
                     "mimetype": "application/x-dosexec"})
    assert Reason.from_json(reason.to_json()) == reason
    assert reason.render(translator(code)) == shown


def test_megapixels_in_french() -> None:
    """Pixel counts as megapixels with the locale's decimal sign."""
    from bot.attachments.reasons import Reason, megapixels

    reason = Reason("it is a {width}×{height} image ({megapixels}), and images over {limit} are "
                    "not allowed", {"width": 8000, "height": 6000,
                                    "megapixels": megapixels(48_000_000),
                                    "limit": megapixels(12_500_000)})
    assert reason.render(translator("fr")) == (
        "le fichier est une image de 8000×6000 (48 mégapixels), et les images de plus de "
        "12,5 mégapixels ne sont pas autorisées")


def test_a_reason_without_facts_is_translated_when_the_catalog_has_it() -> None:
    """Offers refused before reasons were stored as facts show their English text, translated
    when it is a catalog message ("the chat ended")."""
    from bot.attachments.reasons import stored_reason

    assert stored_reason("the chat ended", None, translator("nl")) == "het gesprek is beëindigd"
    assert stored_reason("some scanner said no", None, translator("nl")) == "some scanner said no"
    assert stored_reason(None, "not json", translator("de")) == "unbekannter Fehler"


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("en", "Unknown command !foo. Commands: !help, !attachments, !accept N, !decline N, "
               "!end"),
        ("de", "Unbekannter Befehl !foo. Befehle: !hilfe, !anhänge, !annehmen N, !ablehnen N, "
               "!ende"),
        ("fr", "Commande inconnue !foo. Commandes\u00a0: !aide, !fichiers, !accepter N, "
               "!refuser N, !fin"),
    ],
)
def test_unknown_command_lists_the_readers_words(code: str, shown: str) -> None:
    """An unknown command is answered with the commands in the reader's own words."""
    assert render.unknown_command("!foo", t=translator(code)).body == shown

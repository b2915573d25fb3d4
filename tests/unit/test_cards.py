"""Card number detection: networks, lengths, separators, Luhn, and the look-alikes left alone."""

from __future__ import annotations

import pytest

from bot.attachments.cards import (
    Word,
    find_card_numbers,
    find_in_words,
    is_card_number,
    mask_html,
    mask_text,
    network_of,
)

# Every network's prefixes and lengths, with Luhn-valid numbers (test numbers the networks
# publish where there are some).
NETWORK_CASES = [
    ("4111111111111111", "Visa"),
    ("4242424242424242", "Visa"),
    ("4222222222222", "Visa"),  # 13 digits
    ("4000000000000000006", "Visa"),  # 19 digits
    ("5555555555554444", "Mastercard"),
    ("5105105105105100", "Mastercard"),
    ("2223003122003222", "Mastercard"),  # 2-series
    ("378282246310005", "American Express"),
    ("371449635398431", "American Express"),
    ("6011111111111117", "Discover"),
    ("6445644564456445", "Discover"),
    ("6500000000000002", "Discover"),
    ("6221260000000000", "Discover"),  # 622126–622925, inside UnionPay's 62
    ("6011000000000000001", "Discover"),  # 19 digits
    ("3530111333300000", "JCB"),
    ("3566002020360505", "JCB"),
    ("30569309025904", "Diners Club"),  # 14 digits
    ("38520000023237", "Diners Club"),
    ("36227206271667", "Diners Club"),
    ("3056930902590000007", "Diners Club"),  # 19 digits
    ("6200000000000005", "UnionPay"),
    ("6205500000000000004", "UnionPay"),  # 19 digits
    ("6759649826438453", "Maestro"),
    ("5018000000000009", "Maestro"),
    ("6304000000000000000", "Maestro"),
    ("5893000000003", "Maestro"),  # 13 digits
]


@pytest.mark.parametrize(("digits", "network"), NETWORK_CASES)
def test_every_network_is_recognised(digits: str, network: str) -> None:
    """Each network's numbers are card numbers of that network, alone and inside text."""
    assert network_of(digits) == network
    assert is_card_number(digits)
    text = f"my card is {digits}, thanks"
    [finding] = find_card_numbers(text)
    assert text[finding.start:finding.end] == digits
    assert (finding.network, finding.last4) == (network, digits[-4:])


@pytest.mark.parametrize(
    ("digits", "why"),
    [
        ("4111111111111112", "fails Luhn"),
        ("3782822463100052", "Amex prefix, 16 digits: Amex issues only 15"),
        ("2200000000000004", "2200 is below Mastercard's 2221"),
        ("9999999999999995", "no network starts with 9"),
        ("1000000000000008", "no network starts with 1"),
        ("400000000000", "12 digits: too short"),
        ("41111111111111111115", "20 digits: too long"),
        ("5555555555554", "Mastercard prefix, 13 digits"),
    ],
)
def test_numbers_that_are_not_card_numbers(digits: str, why: str) -> None:
    """Wrong check digit, length or prefix: not a card number."""
    assert not is_card_number(digits), why
    assert find_card_numbers(f"number {digits} here") == [], why


# (text, [(the text found, network, last four)]): separators, positions, several numbers.
TEXT_CASES = [
    ("4111 1111 1111 1111", [("4111 1111 1111 1111", "Visa", "1111")]),
    ("4111-1111-1111-1111", [("4111-1111-1111-1111", "Visa", "1111")]),
    ("4111 - 1111 - 1111 - 1111", [("4111 - 1111 - 1111 - 1111", "Visa", "1111")]),
    ("4111  1111  1111  1111", [("4111  1111  1111  1111", "Visa", "1111")]),
    ("4111\u00a01111\u00a01111\u00a01111", [("4111\u00a01111\u00a01111\u00a01111", "Visa",
                                             "1111")]),
    ("Amex 3782 822463 10005 ok", [("3782 822463 10005", "American Express", "0005")]),
    ("Card:4242424242424242.", [("4242424242424242", "Visa", "4242")]),
    ("(5555 5555 5555 4444)", [("5555 5555 5555 4444", "Mastercard", "4444")]),
    ("Visa 4111 1111 1111 1111 exp 12/25 cvv 123",
     [("4111 1111 1111 1111", "Visa", "1111")]),
    # The CVV or a year written after it, in the same style, stays outside the finding.
    ("4111 1111 1111 1111 123", [("4111 1111 1111 1111", "Visa", "1111")]),
    ("4111 1111 1111 1111 2025", [("4111 1111 1111 1111", "Visa", "1111")]),
    ("ref 2025 4111 1111 1111 1111", [("4111 1111 1111 1111", "Visa", "1111")]),
    ("old 4111111111111111 new 5555-5555-5555-4444",
     [("4111111111111111", "Visa", "1111"), ("5555-5555-5555-4444", "Mastercard", "4444")]),
    ("line one\n4111 1111 1111 1111\nline three", [("4111 1111 1111 1111", "Visa", "1111")]),
    # CSV: commas between fields, even after an amount.
    ("2026-12-01,12.50,5555-5555-5555-4444,EUR",
     [("5555-5555-5555-4444", "Mastercard", "4444")]),
    ("4111111111111111,12.50", [("4111111111111111", "Visa", "1111")]),
    ("6205 5000 0000 0000 004", [("6205 5000 0000 0000 004", "UnionPay", "0004")]),
    ("Diners 3056 930902 5904", [("3056 930902 5904", "Diners Club", "5904")]),
]


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES)
def test_card_numbers_in_text(text: str, expected: list[tuple[str, str, str]]) -> None:
    """Numbers written together, in groups with spaces or dashes, among other words."""
    found = [(text[f.start:f.end], f.network, f.last4) for f in find_card_numbers(text)]
    assert found == expected


LOOK_ALIKES = [
    ("Order 4111111111111112", "an order number failing Luhn"),
    ("Invoice INV-2024-000123-4567", "an invoice id"),
    ("IBAN DE89 3704 0044 0532 0130 00", "a German IBAN in groups"),
    ("IBAN DE89370400440532013000", "an IBAN written together"),
    ("GB82 WEST 1234 5698 7654 32", "a British IBAN"),
    ("FR14 2004 1010 0505 0001 3M02 606", "a French IBAN with a letter inside"),
    ("NL91ABNA0417164300", "a Dutch IBAN"),
    ("call +49 1512 3456 787 please", "a phone number after +, Luhn-valid, starting with 4"),
    ("+4915123456787", "the same phone number written together"),
    ("+1 (800) 555-0199", "a US phone number"),
    ("0049 151 2345 6789", "a phone number with 00"),
    ("USPS 9400 1000 0000 0000 0000 02", "a USPS tracking number"),
    ("UPS 1Z 999 AA1 01 2345 6784", "a UPS tracking number"),
    ("FedEx 7489 9881 2345", "a FedEx tracking number (12 digits)"),
    ("from 2024-01-15 to 2024-02-15", "dates"),
    ("15.01.2024 - 15.02.2024 12:30", "dates and a time"),
    ("2024 01 15 2024 02 15 2024", "dates with spaces"),
    ("total 0.4111111111111111 EUR", "the fraction of a decimal number"),
    ("4111111111111111.5", "a decimal number"),
    ("ID4111111111111111", "digits glued to letters"),
    ("4111111111111111X", "digits glued to letters after"),
    ("41111111111111111111111", "a 23-digit number written together"),
    ("4111-1111 1111-1111", "mixed separators"),
    ("41 11 11 11 11 11 11 11", "groups of two digits"),
    ("4111 1111 1111 11 11", "a group of two digits"),
    ("my_4111111111111111", "part of an identifier"),
]


@pytest.mark.parametrize(("text", "what"), LOOK_ALIKES)
def test_look_alikes_are_left_alone(text: str, what: str) -> None:
    """Things that look like card numbers but are not: no finding, masked text unchanged."""
    assert find_card_numbers(text) == [], what
    assert mask_text(text) == (text, 0), what


@pytest.mark.parametrize(
    ("text", "masked", "count"),
    [
        ("pay with 4111 1111 1111 1111 please", "pay with \u2022\u2022\u2022\u2022 1111 please",
         1),
        ("4242-4242-4242-4242", "\u2022\u2022\u2022\u2022 4242", 1),
        ("a 378282246310005 b 6011111111111117 c",
         "a \u2022\u2022\u2022\u2022 0005 b \u2022\u2022\u2022\u2022 1117 c", 2),
        ("no card here, order 12345", "no card here, order 12345", 0),
        ("", "", 0),
    ],
)
def test_mask_text_keeps_the_last_four(text: str, masked: str, count: int) -> None:
    """Masking replaces the whole number, separators included, by four bullets and its end."""
    assert mask_text(text) == (masked, count)


def _words(*lines: str) -> list[Word]:
    """OCR-like words, one line per argument, boxes 10 px per character."""
    words = []
    for number, line in enumerate(lines):
        left = 0
        for text in line.split(" "):
            words.append(Word(text, left, number * 20, len(text) * 10, 16, number))
            left += (len(text) + 1) * 10
    return words


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (("Card 4111 1111 1111 1111",), [((1, 2, 3, 4), "Visa")]),
        (("Card: 4111111111111111 exp 12/25",), [((1,), "Visa")]),
        (("name John", "number 5555-5555-5555-4444"), [((3,), "Mastercard")]),
        # OCR's usual mistakes in a word of digits: l for 1, O for 0, S for 5.
        (("4lll 1111 1111 1111",), [((0, 1, 2, 3), "Visa")]),
        (("5S55 5555 5555 4444",), [((0, 1, 2, 3), "Mastercard")]),
        (("6011 0O00 0000 0000 001",), [((0, 1, 2, 3, 4), "Discover")]),
        # A word with no digit at all stays a word.
        (("6011 OOOO 0000 0000 001",), []),
        # A number's groups on two lines are two lines: not joined.
        (("4111 1111", "1111 1111"), []),
        (("Order 4111111111111112",), []),
        (("IBAN DE89 3704 0044 0532 0130 00",), []),
        (("Router model", "Serial 1234"), []),
    ],
)
def test_find_in_ocr_words(lines: tuple[str, ...], expected: list[tuple[tuple[int, ...], str]]
                           ) -> None:
    """OCR words: a line's words are searched together; the words of a number are found."""
    found = [(f.words, f.network) for f in find_in_words(_words(*lines))]
    assert found == expected


def test_words_are_ordered_by_position_within_a_line() -> None:
    """Words given out of order on a line are read left to right."""
    words = [Word("1111", 150, 0, 40, 16, 0), Word("4111", 0, 0, 40, 16, 0),
             Word("1111", 100, 0, 40, 16, 0), Word("1111", 50, 0, 40, 16, 0)]
    [finding] = find_in_words(words)
    assert sorted(finding.words) == [0, 1, 2, 3]


M = "\u2022\u2022\u2022\u2022 "


@pytest.mark.parametrize(
    ("fragment", "masked", "count"),
    [
        ("pay <b>4111 1111 1111 1111</b> now", f"pay <b>{M}1111</b> now", 1),
        # Split by inline tags: the mask stands where the number began, the rest is gone.
        ("<b>4111</b> 1111 1111 1111 ok", f"<b>{M}1111</b> ok", 1),
        ("4111<span>1111</span>1111<i>1111</i>!", f"{M}1111<span></span><i></i>!", 1),
        ("<code>5555-5555</code>-5555-4444", f"<code>{M}4444</code>", 1),
        # Character references are what the reader sees.
        ("&#52;111 1111 1111 1111", f"{M}1111", 1),
        ("4242&nbsp;4242&nbsp;4242&nbsp;4242", f"{M}4242", 1),
        # Escaping survives; a link's URL is masked on its own.
        ('<a href="https://x.example/?c=4111111111111111">a &lt;b&gt;</a>',
         f'<a href="https://x.example/?c={M}1111">a &lt;b&gt;</a>', 1),
        # Paragraphs and line breaks are boundaries: digits in two blocks are not joined.
        ("<p>4111 1111</p><p>1111 1111</p>", "<p>4111 1111</p><p>1111 1111</p>", 0),
        ("4111 1111<br>1111 1111", "4111 1111<br>1111 1111", 0),
        ("<ul><li>4111111111111111</li><li>378282246310005</li></ul>",
         f"<ul><li>{M}1111</li><li>{M}0005</li></ul>", 2),
        ("IBAN <b>DE89 3704 0044 0532 0130 00</b>", "IBAN <b>DE89 3704 0044 0532 0130 00</b>", 0),
        ("", "", 0),
    ],
)
def test_mask_html(fragment: str, masked: str, count: int) -> None:
    """Formatted bodies: numbers found as the reader sees them, also when tags split them."""
    assert mask_html(fragment) == (masked, count)

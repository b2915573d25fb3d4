"""Display-name disambiguation: a name that could mislead gets the user id added."""

from __future__ import annotations

import pytest

from bot.sessions.naming import disambiguate

AGENTS = ["Alice", "Bob Smith"]
LABEL = "support"

CASES = [
    # (id, user_id, name, others, is_agent, expected)
    ("unique-customer", "@carol:hs", "Carol", {"@alice:hs": "Alice"}, False, "Carol"),
    ("no-others", "@carol:hs", "Carol", {}, False, "Carol"),
    ("self-in-others", "@carol:hs", "Carol", {"@carol:hs": "Carol"}, False, "Carol"),
    ("same-name-other-member", "@carol:hs", "Carol", {"@carol2:hs": "Carol"}, False,
     "Carol (@carol:hs)"),
    ("same-name-case", "@carol:hs", "Carol", {"@c2:hs": "cAROL"}, False, "Carol (@carol:hs)"),
    ("same-name-whitespace", "@carol:hs", "Carol  Jones", {"@c2:hs": " carol\tjones "}, False,
     "Carol  Jones (@carol:hs)"),
    ("same-name-casefold", "@s:hs", "Strasse", {"@s2:hs": "STRASSE"}, False,
     "Strasse (@s:hs)"),
    ("german-sharp-s", "@s:hs", "Straße", {"@s2:hs": "STRASSE"}, False, "Straße (@s:hs)"),
    ("different-name", "@carol:hs", "Carol", {"@c2:hs": "Caroline"}, False, "Carol"),
    ("customer-copies-agent", "@eve:hs", "Alice", {}, False, "Alice (@eve:hs)"),
    ("customer-copies-agent-case", "@eve:hs", "  aLiCe ", {}, False, "  aLiCe  (@eve:hs)"),
    ("customer-copies-agent-space", "@eve:hs", "bob   SMITH", {}, False,
     "bob   SMITH (@eve:hs)"),
    ("customer-carries-label", "@eve:hs", "Eve (support)", {}, False,
     "Eve (support) (@eve:hs)"),
    ("customer-carries-label-case", "@eve:hs", "Eve (SUPPORT)", {}, False,
     "Eve (SUPPORT) (@eve:hs)"),
    ("customer-label-only", "@eve:hs", "(support)", {}, False, "(support) (@eve:hs)"),
    ("customer-agent-name-with-label", "@eve:hs", "Alice (support)", {}, False,
     "Alice (support) (@eve:hs)"),
    ("customer-word-support-no-parens", "@eve:hs", "Support Fan", {}, False, "Support Fan"),
    ("customer-prefix-of-agent", "@eve:hs", "Ali", {}, False, "Ali"),
    ("agent-keeps-plain-name", "@alice:hs", "Alice", {"@carol:hs": "Carol"}, True, "Alice"),
    ("agent-with-label-in-name", "@alice:hs", "Alice (support)", {}, True, "Alice (support)"),
    ("agents-same-name", "@alice:hs", "Alice", {"@alice2:hs": "Alice"}, True,
     "Alice (@alice:hs)"),
    ("agent-same-name-as-customer", "@alice:hs", "Carol", {"@carol:hs": "Carol"}, True,
     "Carol (@alice:hs)"),
]


@pytest.mark.parametrize(
    ("user_id", "name", "others", "is_agent", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_disambiguate(
    user_id: str, name: str, others: dict[str, str], is_agent: bool, expected: str
) -> None:
    """The user id is added exactly when the name clashes with another member or imitates staff."""
    assert disambiguate(user_id, name, others, AGENTS, LABEL, is_agent) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Eve (support)", "Eve (support)"), ("Alice", "Alice (@eve:hs)")],
    ids=["label-ignored", "agent-name-still-checked"],
)
def test_empty_agent_label_is_not_checked(name: str, expected: str) -> None:
    """With no agent label configured only agent names count as imitation."""
    assert disambiguate("@eve:hs", name, {}, AGENTS, "", False) == expected


def test_defaults_only_check_other_members() -> None:
    """Without agent names or label, only a clash with another member adds the id."""
    assert disambiguate("@eve:hs", "Alice", {}) == "Alice"
    assert disambiguate("@eve:hs", "Alice", {"@a:hs": "alice"}) == "Alice (@eve:hs)"


def test_agent_names_may_be_any_iterable() -> None:
    """agent_names is read as any iterable, such as a generator."""
    names = (n for n in ["Alice"])
    assert disambiguate("@eve:hs", "alice", {}, names, LABEL) == "alice (@eve:hs)"


@pytest.mark.parametrize(
    ("name", "others"),
    [
        ("Ali\u200bce", {}),
        ("Alice\u200e", {}),
        ("\u2066Alice\u2069", {}),
        ("Eve (sup\u200bport)", {}),
        ("Car\u00adol", {"@carol:hs": "Carol"}),
    ],
    ids=["zero-width-space", "lrm", "isolates", "label-zero-width", "soft-hyphen-clash"],
)
def test_invisible_characters_do_not_hide_imitation(name: str, others: dict[str, str]) -> None:
    """A name that differs from an agent's or member's only by invisible characters gets the id."""
    assert disambiguate("@eve:hs", name, others, AGENTS, LABEL, False).endswith(" (@eve:hs)")


LOOK_ALIKES = [
    # (id, name, others, is_agent, expected)
    ("cyrillic-capital-a", "\u0410lice", {}, False, "\u0410lice (@eve:hs)"),
    ("cyrillic-in-two-words", "B\u043eb Smith", {}, False, "B\u043eb Smith (@eve:hs)"),
    ("capital-i-for-l", "AIice", {}, False, "AIice (@eve:hs)"),
    ("digit-zero-for-o", "B0b Smith", {}, False, "B0b Smith (@eve:hs)"),
    ("fullwidth", "\uff21lice", {}, False, "\uff21lice (@eve:hs)"),
    ("greek-label", "Eve (\u0455upport)", {}, False, "Eve (\u0455upport) (@eve:hs)"),
    ("member-look-alike", "C\u0430rol", {"@carol:hs": "Carol"}, False,
     "C\u0430rol (@eve:hs)"),
    ("rn-for-m", "Sarn", {"@sam:hs": "Sam"}, False, "Sarn (@eve:hs)"),
    ("accent-is-a-different-name", "Alicé", {}, False, "Alicé"),
    ("other-name", "Karol", {"@carol:hs": "Carol"}, False, "Karol"),
    ("cyrillic-name-of-its-own", "\u0411\u043e\u0440\u0438\u0441", {}, False,
     "\u0411\u043e\u0440\u0438\u0441"),
]


@pytest.mark.parametrize(
    ("name", "others", "is_agent", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in LOOK_ALIKES],
)
def test_look_alike_names_get_the_user_id(
    name: str, others: dict[str, str], is_agent: bool, expected: str
) -> None:
    """Names that only look like an agent's or a member's (UTS #39 confusables) are flagged."""
    assert disambiguate("@eve:hs", name, others, AGENTS, LABEL, is_agent) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [("\u0410gent", "Agent"), ("AIice", "Alice"), ("m", "rn"), ("\u0455", "s"), ("0", "O")],
)
def test_skeletons_of_look_alikes_agree(a: str, b: str) -> None:
    """Look-alike strings share one skeleton."""
    from bot.sessions.naming import skeleton

    assert skeleton(a) == skeleton(b)

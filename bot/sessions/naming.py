"""How people are named across the relay: display names, disambiguated, never trusted."""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import cache

from bot.attachments.text import strip_invisible

# The package wraps right-to-left characters in these marks for display; they are not data.
_DISPLAY_MARKS = str.maketrans("", "", "\u200e\u200f")


@cache
def _prototypes() -> dict[str, str]:
    """Each confusable character → the one string standing for its whole class.

    Built once from the Unicode confusables data (UTS #39, ``confusables.txt``) that the
    ``confusable-homoglyphs`` package ships. The package lists each pair in both directions,
    so the classes are its connected groups; a class's representative is its multi-character
    prototype if it has one (sources are always single characters: "m" → "rn"), else its
    best-connected member (the prototype the others map to), preferring ASCII.
    """
    from confusable_homoglyphs.confusables import confusables_data

    neighbours: defaultdict[str, set[str]] = defaultdict(set)
    for key, entries in confusables_data.items():
        source = key.translate(_DISPLAY_MARKS)
        for entry in entries:
            target = str(entry.get("c", "")).translate(_DISPLAY_MARKS)
            if source and target and source != target:
                neighbours[source].add(target)
                neighbours[target].add(source)
    mapping: dict[str, str] = {}
    seen: set[str] = set()
    for start in neighbours:
        if start in seen:
            continue
        group, todo = [], [start]
        seen.add(start)
        while todo:
            node = todo.pop()
            group.append(node)
            for other in neighbours[node] - seen:
                seen.add(other)
                todo.append(other)
        representative = min(
            group, key=lambda n: (len(n) == 1, -len(neighbours[n]), not n.isascii(), n)
        )
        for node in group:
            if len(node) == 1 and node != representative:
                mapping[node] = representative
    return mapping


def skeleton(text: str) -> str:
    """The UTS #39 skeleton of ``text``: look-alike characters replaced by one prototype.

    "Аgent" (Cyrillic А) and "Agent" have the same skeleton, so do "AIice" (capital i) and
    "Alice". Decomposed (NFD) before and after, as the standard says; applied twice so a
    multi-character prototype's own characters are folded too.
    """
    table = _prototypes()
    for _ in range(2):
        text = unicodedata.normalize("NFD", text)
        text = "".join(table.get(ch, ch) for ch in text)
    return unicodedata.normalize("NFD", text)


def _folds(name: str) -> frozenset[str]:
    """The forms under which two names look the same to a reader.

    Invisible characters and compatibility forms go (NFKC), case is folded and look-alikes
    are mapped to their skeleton. Case folding and skeletons do not commute ("ß" folds to "ss",
    capital "I" looks like "l" only before folding), so both orders count.
    """
    plain = strip_invisible(unicodedata.normalize("NFKC", name))
    forms = (skeleton(plain.casefold()), skeleton(skeleton(plain).casefold()))
    return frozenset(" ".join(form.split()) for form in forms)


def disambiguate(
    user_id: str,
    name: str,
    others: Mapping[str, str],
    agent_names: Iterable[str] = (),
    agent_label: str = "",
    is_agent: bool = False,
) -> str:
    """The name to show for ``user_id``, with the user id added when the name could mislead.

    It is ambiguous when another member (``others``: user id → name) uses the same name or one
    that looks the same (case, spacing, invisible characters, look-alike letters from other
    scripts), or, for someone who is not an agent, when it looks like an agent's name or
    carries the agent label (a customer called "Alice (support)").
    """
    folded = _folds(name)
    clash = any(uid != user_id and folded & _folds(other) for uid, other in others.items())
    imitates = False
    if not is_agent:
        imitates = any(folded & _folds(agent) for agent in agent_names)
        if agent_label:
            labels = {f"({label})" for label in _folds(agent_label)}
            if any(label in form for label in labels for form in folded):
                imitates = True
    return f"{name} ({user_id})" if clash or imitates else name

"""How people are named across the relay: display names, disambiguated, never trusted."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

from bot.attachments.text import strip_invisible


def _fold(name: str) -> str:
    """Compare names as a reader sees them: invisible characters and look-alike forms folded."""
    return " ".join(strip_invisible(unicodedata.normalize("NFKC", name)).casefold().split())


def disambiguate(
    user_id: str,
    name: str,
    others: Mapping[str, str],
    agent_names: Iterable[str] = (),
    agent_label: str = "",
    is_agent: bool = False,
) -> str:
    """The name to show for ``user_id``, with the user id added when the name could mislead.

    It is ambiguous when another member (``others``: user id → name) uses the same name, or,
    for someone who is not an agent, when it copies an agent's name or carries the agent label
    (a customer called "Alice (support)").
    """
    folded = _fold(name)
    clash = any(uid != user_id and _fold(other) == folded for uid, other in others.items())
    imitates = False
    if not is_agent:
        imitates = any(_fold(agent) == folded for agent in agent_names)
        if agent_label and f"({_fold(agent_label)})" in folded:
            imitates = True
    return f"{name} ({user_id})" if clash or imitates else name

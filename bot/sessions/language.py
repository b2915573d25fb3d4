"""Which language each reader gets: a customer room its chat's, an agent room the agents'."""

from __future__ import annotations

from bot.config import Config
from bot.i18n import Translator
from bot.store import Session, Side


def reader(config: Config, session: Session, side: Side) -> Translator:
    """The translator for the people in ``side``'s room of ``session``.

    Customer rooms speak the language chosen with ``!language`` (while the configuration
    still allows it), else ``language``; agent rooms speak ``agents.language``.
    """
    if side is Side.AGENT:
        return config.translator(config.agents.language)
    chosen = session.language
    return config.translator(chosen if chosen in config.languages else config.language)

"""The offer: its directions, its states and the transition table that governs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Direction(StrEnum):
    """Which side sent the file; the other side decides."""

    CUSTOMER_TO_AGENT = "customer_to_agent"
    AGENT_TO_CUSTOMER = "agent_to_customer"


class OfferState(StrEnum):
    """Where an offer stands.

    ``inspecting`` is the durable "work queued" state between the upload event and the offer
    message; ``accepted`` means the recipient said yes (delivery progress is tracked apart, in
    ``Offer.delivery_event_id``). Every other state but ``offered`` is final.
    """

    INSPECTING = "inspecting"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"


# The only moves an offer can make. Everything not listed is refused, which is how "the first
# decision wins" and "a late reaction changes nothing" are enforced.
TRANSITIONS: dict[OfferState, frozenset[OfferState]] = {
    OfferState.INSPECTING: frozenset(
        {OfferState.OFFERED, OfferState.REJECTED, OfferState.WITHDRAWN, OfferState.EXPIRED}
    ),
    # FAILED from OFFERED: the offer could never be shown to the recipient.
    OfferState.OFFERED: frozenset(
        {OfferState.ACCEPTED, OfferState.DECLINED, OfferState.WITHDRAWN, OfferState.EXPIRED,
         OfferState.FAILED}
    ),
    OfferState.ACCEPTED: frozenset({OfferState.FAILED}),
    OfferState.DECLINED: frozenset(),
    OfferState.WITHDRAWN: frozenset(),
    OfferState.EXPIRED: frozenset(),
    OfferState.REJECTED: frozenset(),
    OfferState.FAILED: frozenset(),
}

PENDING_STATES = frozenset({OfferState.INSPECTING, OfferState.OFFERED})


def can_transition(current: OfferState, target: OfferState) -> bool:
    """Whether the transition table allows moving from ``current`` to ``target``."""
    return target in TRANSITIONS[current]


@dataclass(frozen=True)
class Offer:
    """One attachment of one session, as the store keeps it."""

    id: int
    session_id: int
    direction: Direction
    sender: str
    sender_name: str
    source_room: str
    source_event_id: str
    msgtype: str
    filename: str
    declared_mimetype: str | None
    declared_size: int | None
    state: OfferState
    created_at: float
    updated_at: float
    mimetype: str | None = None
    size: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    temp_path: str | None = None
    offer_room: str | None = None
    offer_event_id: str | None = None
    status_room: str | None = None
    status_event_id: str | None = None
    delivery_event_id: str | None = None
    decided_by: str | None = None
    scanned: bool = False
    # The key of the sealed copy at temp_path (bot/attachments/sealed.py): a secret.
    temp_key: str | None = field(default=None, repr=False)
    # The recipient's copy, uploaded while the offer waits (media.prestage): its content URI,
    # its encryption block with the key (JSON, encrypted rooms only) and whether it is
    # encrypted, so that ✅ costs one event.
    staged_uri: str | None = None
    staged_file: str | None = field(default=None, repr=False)
    staged_encrypted: int | None = None
    number: int | None = None  # per session: the chat's first file is #1
    decided_at: float | None = None
    # The copy that is delivered, when it differs from the checked one (metadata removed).
    delivered_sha256: str | None = None
    delivered_size: int | None = None
    # An in-line image's blurhash and thumbnail (JSON for the delivery's info; the thumbnail's
    # key in an encrypted room), made while the local copy is there.
    image_info: str | None = field(default=None, repr=False)
    # Content URIs reserved for the recipient's copy and its thumbnail before uploading
    # (bot.matrix.media.Reservation as JSON, with the AES key in an encrypted room).
    copy_reservation: str | None = field(default=None, repr=False)
    thumbnail_reservation: str | None = field(default=None, repr=False)
    # Payment card numbers (policy.card_numbers): how many were hidden in the delivered copy
    # (None: the file was not searched), and why it could not be searched, if so.
    redacted: int | None = None
    unchecked: str | None = None

    @property
    def is_pending(self) -> bool:
        """True while nobody has decided and the offer can still change."""
        return self.state in PENDING_STATES

    @property
    def shown_number(self) -> int:
        """The number people see and type (``!accept 1``): per chat, the global id as fallback."""
        return self.number if self.number is not None else self.id

"""The offer state machine: the transition table, checked pair by pair."""

from __future__ import annotations

import itertools

import pytest

from bot.attachments.model import (
    PENDING_STATES,
    TRANSITIONS,
    Direction,
    Offer,
    OfferState,
    can_transition,
)

S = OfferState

# The expected table, written out independently of the code: from-state → allowed targets.
EXPECTED: dict[OfferState, set[OfferState]] = {
    S.INSPECTING: {S.OFFERED, S.REJECTED, S.WITHDRAWN, S.EXPIRED},
    S.OFFERED: {S.ACCEPTED, S.DECLINED, S.WITHDRAWN, S.EXPIRED, S.FAILED},
    S.ACCEPTED: {S.FAILED},
    S.DECLINED: set(),
    S.WITHDRAWN: set(),
    S.EXPIRED: set(),
    S.REJECTED: set(),
    S.FAILED: set(),
}

FINAL_STATES = [S.DECLINED, S.WITHDRAWN, S.EXPIRED, S.REJECTED, S.FAILED]

ALL_PAIRS = [
    pytest.param(src, dst, dst in EXPECTED[src], id=f"{src.value}->{dst.value}")
    for src, dst in itertools.product(OfferState, OfferState)
]


@pytest.mark.parametrize(("current", "target", "allowed"), ALL_PAIRS)
def test_can_transition_matches_the_expected_table(
    current: OfferState, target: OfferState, allowed: bool
) -> None:
    """can_transition allows exactly the moves of the lifecycle and refuses every other pair."""
    assert can_transition(current, target) is allowed
    assert (target in TRANSITIONS[current]) is allowed


def test_every_state_has_a_row_in_the_table() -> None:
    """TRANSITIONS has one entry per OfferState, so can_transition never raises KeyError."""
    assert set(TRANSITIONS) == set(OfferState)


@pytest.mark.parametrize("state", FINAL_STATES, ids=lambda s: s.value)
def test_final_states_have_no_exits(state: OfferState) -> None:
    """A declined, withdrawn, expired, rejected or failed offer can never change again."""
    assert TRANSITIONS[state] == frozenset()
    assert not any(can_transition(state, target) for target in OfferState)


@pytest.mark.parametrize("state", list(OfferState), ids=lambda s: s.value)
def test_no_state_moves_to_itself(state: OfferState) -> None:
    """A repeated decision is refused rather than recorded twice."""
    assert not can_transition(state, state)


@pytest.mark.parametrize("state", list(OfferState), ids=lambda s: s.value)
def test_nothing_moves_back_to_inspecting(state: OfferState) -> None:
    """INSPECTING is only an initial state: no transition leads into it."""
    assert not can_transition(state, S.INSPECTING)


@pytest.mark.parametrize("decision", [S.ACCEPTED, S.DECLINED], ids=lambda s: s.value)
@pytest.mark.parametrize("later", [S.ACCEPTED, S.DECLINED, S.WITHDRAWN, S.EXPIRED],
                         ids=lambda s: s.value)
def test_first_decision_wins(decision: OfferState, later: OfferState) -> None:
    """Once accepted or declined, no later decision, withdrawal or expiry is possible."""
    assert can_transition(S.OFFERED, decision)
    assert not can_transition(decision, later)


def test_pending_states_are_inspecting_and_offered() -> None:
    """Only INSPECTING and OFFERED count as pending (still open to change by people)."""
    assert PENDING_STATES == frozenset({S.INSPECTING, S.OFFERED})


@pytest.mark.parametrize(
    ("state", "pending"),
    [(state, state in (S.INSPECTING, S.OFFERED)) for state in OfferState],
    ids=lambda v: v.value if isinstance(v, OfferState) else str(v),
)
def test_offer_is_pending_follows_pending_states(state: OfferState, pending: bool) -> None:
    """Offer.is_pending is true exactly for the pending states."""
    offer = Offer(
        id=1, session_id=1, direction=Direction.CUSTOMER_TO_AGENT, sender="@c:hs",
        sender_name="C", source_room="!r:hs", source_event_id="$e", msgtype="m.file",
        filename="f.txt", declared_mimetype=None, declared_size=None, state=state,
        created_at=0.0, updated_at=0.0,
    )
    assert offer.is_pending is pending


@pytest.mark.parametrize(
    ("value", "state"), [(s.value, s) for s in OfferState], ids=lambda v: str(v)
)
def test_state_values_round_trip_through_strings(value: str, state: OfferState) -> None:
    """State values are the lowercase words the store and the io.parcel.offer block use."""
    assert OfferState(value) is state
    assert value == state.name.lower()

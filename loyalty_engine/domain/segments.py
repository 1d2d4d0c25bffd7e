"""Buying-pattern segments: RFM scores and the standard RFM segment map, in one place.

Scores are quintiles 1-5 over the program's members with purchases:

* Recency R: by last purchase time; the most recent fifth scores 5.
* Frequency F: by number of orders (net of fully returned ones); the most frequent fifth 5.
* Monetary M: by net spend; the biggest spenders' fifth 5.

A score is ``1 + 5 * (rank - 1) // n`` with ``rank`` the SQL ``RANK()`` (1-based, ties
share the lowest rank) over ``n`` scored members, so equal values always score the same.
(PostgreSQL computes the same numbers from cuts rather than ranks; see
``loyalty_engine/storage/segments.py``.)

Named segments follow the widely used R x F grid (M is reported, not used for naming):

    F\\R   1               2               3               4                    5
    5     Cannot lose them Cannot lose them Loyal          Loyal                Champions
    4     At risk         At risk         Loyal           Loyal                Champions
    3     At risk         At risk         Need attention  Potential loyalists  Potential loyalists
    2     Lost            Hibernating     About to sleep  Potential loyalists  Potential loyalists
    1     Lost            Hibernating     About to sleep  Promising            New
"""

from __future__ import annotations

from dataclasses import dataclass

from loyalty_engine.domain.errors import NotFound


@dataclass(frozen=True)
class Segment:
    """A named RFM segment and the R and F scores it covers."""

    segment_id: str
    name: str
    recency: frozenset[int]
    frequency: frozenset[int]


def _s(*values: int) -> frozenset[int]:
    return frozenset(values)


SEGMENTS: tuple[Segment, ...] = (
    Segment("champions", "Champions", _s(5), _s(4, 5)),
    Segment("loyal", "Loyal", _s(3, 4), _s(4, 5)),
    Segment("potential-loyalists", "Potential loyalists", _s(4, 5), _s(2, 3)),
    Segment("new", "New", _s(5), _s(1)),
    Segment("promising", "Promising", _s(4), _s(1)),
    Segment("need-attention", "Need attention", _s(3), _s(3)),
    Segment("about-to-sleep", "About to sleep", _s(3), _s(1, 2)),
    Segment("at-risk", "At risk", _s(1, 2), _s(3, 4)),
    Segment("cannot-lose-them", "Cannot lose them", _s(1, 2), _s(5)),
    Segment("hibernating", "Hibernating", _s(2), _s(1, 2)),
    Segment("lost", "Lost", _s(1), _s(1, 2)),
)
SEGMENTS_BY_ID = {s.segment_id: s for s in SEGMENTS}


def segment_for(recency: int, frequency: int) -> Segment:
    """The segment of an R and F score (every one of the 25 cells has exactly one)."""
    for segment in SEGMENTS:
        if recency in segment.recency and frequency in segment.frequency:
            return segment
    raise ValueError(f"scores out of range: R={recency} F={frequency}")


def segment_by_id(segment_id: str) -> Segment:
    """A segment by its id, or NOT_FOUND."""
    segment = SEGMENTS_BY_ID.get(segment_id)
    if segment is None:
        raise NotFound("SEGMENT_NOT_FOUND", f"segment {segment_id!r} not found")
    return segment


def quintile(rank: int, count: int) -> int:
    """The 1-5 score of a 1-based rank among `count` (the same formula the SQL pass uses)."""
    return 1 + (5 * (rank - 1)) // count

"""Members: protobuf <-> domain."""

from __future__ import annotations

from loyalty_engine.api.converters.common import (
    from_date,
    optional_datetime,
    set_timestamp,
    to_date,
)
from loyalty_engine.domain.members import Member, MemberState
from loyalty_engine.domain.names import child_name, member_name
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as pb

_STATE = {MemberState.ACTIVE: pb.MEMBER_STATE_ACTIVE, MemberState.ERASED: pb.MEMBER_STATE_ERASED}
STATE_FROM_PROTO = {v: k for k, v in _STATE.items()}


def member_from_proto(program_id: str, member_id: str, m: pb.Member) -> Member:
    """A domain Member; empty strings mean "not given"."""
    return Member(
        program_id=program_id,
        member_id=member_id,
        external_id=m.external_id,
        given_name=m.given_name or None,
        family_name=m.family_name or None,
        email=m.email or None,
        phone=m.phone or None,
        card_number=m.card_number or None,
        birth_date=to_date(m.birth_date, "member.birth_date") if m.HasField("birth_date") else None,
        join_time=optional_datetime(m, "join_time", "member.join_time"),
        marketing_consent=m.marketing_consent,
    )


def member_to_proto(member: Member) -> pb.Member:
    """A Member message."""
    msg = pb.Member(
        name=member_name(member.program_id, member.member_id),
        external_id=member.external_id,
        given_name=member.given_name or "",
        family_name=member.family_name or "",
        email=member.email or "",
        phone=member.phone or "",
        card_number=member.card_number or "",
        marketing_consent=member.marketing_consent,
        state=_STATE[member.state],
        tier=child_name(member.program_id, "tiers", member.tier_id) if member.tier_id else "",
    )
    birth = from_date(member.birth_date)
    if birth is not None:
        msg.birth_date.CopyFrom(birth)
    set_timestamp(msg.join_time, member.join_time)
    set_timestamp(msg.create_time, member.create_time)
    set_timestamp(msg.update_time, member.update_time)
    return msg


MEMBER_UPDATABLE = {
    "external_id",
    "given_name",
    "family_name",
    "email",
    "phone",
    "card_number",
    "birth_date",
    "marketing_consent",
    "join_time",
}

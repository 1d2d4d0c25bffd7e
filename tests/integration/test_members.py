"""MemberService through the real server: enrolment, profile, lists, lookup and erasure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC).replace(tzinfo=None))
    return stamp


async def get(scenario: Any, name: str) -> mp.Member:
    return (await scenario.client.members.GetMember(mp.GetMemberRequest(name=name))).member


def enroll(scenario: Any, program: str, member: mp.Member, member_id: str = "") -> Any:
    return scenario.client.members.EnrollMember(
        mp.EnrollMemberRequest(
            request_id=uid("r"), parent=f"programs/{program}", member_id=member_id, member=member
        )
    )


def update(scenario: Any, member: mp.Member, *paths: str) -> Any:
    return scenario.client.members.UpdateMember(
        mp.UpdateMemberRequest(
            request_id=uid("r"),
            member=member,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
    )


def lookup(scenario: Any, program: str, **key: str) -> Any:
    return scenario.client.members.LookupMember(
        mp.LookupMemberRequest(parent=f"programs/{program}", **key)
    )


async def list_all(scenario: Any, program: str, **filters: Any) -> list[mp.Member]:
    members: list[mp.Member] = []
    token = ""
    while True:
        page = await scenario.client.members.ListMembers(
            mp.ListMembersRequest(
                parent=f"programs/{program}", page_size=500, page_token=token, **filters
            )
        )
        members.extend(page.members)
        token = page.next_page_token
        if not token:
            return members


async def test_enroll_keeps_every_profile_field_and_get_returns_it(scenario, clock) -> None:
    program = await scenario.program()
    external = uid("ext")
    name = await scenario.member(
        program,
        external_id=external,
        given_name="Ada",
        family_name="Lovelace",
        email="ada@example.com",
        phone="+4915112345678",
        card_number="CARD-0001",
        birth_date={"year": 1990, "month": 12, "day": 10},
        join_time="2026-01-02T03:04:05Z",
        marketing_consent=True,
    )

    member = await get(scenario, name)

    assert member.name == name and name.startswith(f"programs/{program}/members/")
    assert member.external_id == external
    assert (member.given_name, member.family_name) == ("Ada", "Lovelace")
    assert (member.email, member.phone, member.card_number) == (
        "ada@example.com",
        "+4915112345678",
        "CARD-0001",
    )
    assert (member.birth_date.year, member.birth_date.month, member.birth_date.day) == (
        1990,
        12,
        10,
    )
    assert member.join_time.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert member.marketing_consent is True
    assert member.state == mp.MEMBER_STATE_ACTIVE
    assert member.tier == ""
    assert member.create_time.ToDatetime(tzinfo=UTC) == clock.now


async def test_join_time_defaults_to_enrolment_time_and_member_id_can_be_chosen(
    scenario, clock
) -> None:
    program = await scenario.program()
    reply = await enroll(scenario, program, mp.Member(external_id="x-1"), "shop_42")

    assert reply.member.name == f"programs/{program}/members/shop_42"
    assert reply.member.join_time.ToDatetime(tzinfo=UTC) == clock.now
    assert reply.member.marketing_consent is False


async def test_duplicate_keys_are_already_exists_with_a_reason_per_key(scenario, errors) -> None:
    program = await scenario.program()
    other_program = await scenario.program()
    await scenario.member(
        program,
        external_id="ext-1",
        email="Grace@Example.com",
        phone="+4915100000001",
        card_number="C-1",
    )
    await enroll(scenario, program, mp.Member(external_id="ext-0"), "taken-id")

    cases = [
        (mp.Member(external_id="ext-1"), "", "EXTERNAL_ID_TAKEN"),
        (mp.Member(external_id="ext-2", email="grace@EXAMPLE.com"), "", "EMAIL_TAKEN"),
        (mp.Member(external_id="ext-3", phone="+4915100000001"), "", "PHONE_TAKEN"),
        (mp.Member(external_id="ext-4", card_number="C-1"), "", "CARD_NUMBER_TAKEN"),
        (mp.Member(external_id="ext-5"), "taken-id", "MEMBER_EXISTS"),
    ]
    for member, member_id, reason in cases:
        code, got, _ = await errors(enroll(scenario, program, member, member_id))
        assert (code, got) == (grpc.StatusCode.ALREADY_EXISTS, reason)

    # Nothing of the failed enrolments was kept: the keys they tried are still free.
    assert len(await list_all(scenario, program)) == 2
    for key in ({"external_id": "ext-2"}, {"external_id": "ext-3"}, {"external_id": "ext-4"}):
        code, reason, _ = await errors(lookup(scenario, program, **key))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    # Keys are unique per program only.
    await scenario.member(other_program, external_id="ext-1", email="grace@example.com")


async def test_enroll_rejects_bad_fields_naming_each(scenario, errors, clock) -> None:
    program = await scenario.program()
    future = clock.now.date() + timedelta(days=1)
    member = mp.Member(
        external_id="",
        given_name="x" * 201,
        email="not-an-email",
        phone="0151 1234",
        card_number="card with spaces",
        birth_date=common_pb2.Date(year=future.year, month=future.month, day=future.day),
    )

    code, reason, fields = await errors(enroll(scenario, program, member))

    assert (code, reason) == (INVALID, "INVALID_FIELD")
    assert set(fields) == {
        "member.external_id",
        "member.given_name",
        "member.email",
        "member.phone",
        "member.card_number",
        "member.birth_date",
    }
    code, reason, fields = await errors(
        enroll(
            scenario,
            program,
            mp.Member(external_id="e", birth_date=common_pb2.Date(year=2001, month=2, day=30)),
        )
    )
    assert (code, fields) == (INVALID, ["member.birth_date"])
    code, reason, fields = await errors(
        enroll(scenario, program, mp.Member(external_id="e"), "Bad Id!")
    )
    assert (code, fields) == (INVALID, ["member_id"])
    assert await list_all(scenario, program) == []


async def test_enroll_in_unknown_or_malformed_program(scenario, errors) -> None:
    code, reason, _ = await errors(enroll(scenario, "no-such-program", mp.Member(external_id="e")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")

    code, reason, fields = await errors(
        scenario.client.members.EnrollMember(
            mp.EnrollMemberRequest(
                request_id=uid("r"), parent="program/x", member=mp.Member(external_id="e")
            )
        )
    )
    assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["parent"])


async def test_update_changes_only_masked_fields_and_moves_lookup_keys(scenario, errors) -> None:
    program = await scenario.program()
    name = await scenario.member(
        program,
        given_name="Ada",
        family_name="Lovelace",
        email="ada@example.com",
        phone="+4915100000002",
        marketing_consent=True,
    )
    before = await get(scenario, name)

    reply = await update(
        scenario,
        mp.Member(name=name, given_name="Augusta", email="AUGUSTA@example.com", family_name=""),
        "given_name",
        "email",
    )

    after = await get(scenario, name)
    assert reply.member == after
    assert after.given_name == "Augusta"
    assert after.family_name == "Lovelace"  # not in the mask: untouched although sent empty
    assert after.phone == before.phone and after.marketing_consent is True
    assert after.external_id == before.external_id and after.join_time == before.join_time
    found = await lookup(scenario, program, email="augusta@EXAMPLE.COM")
    assert found.member.name == name
    code, reason, _ = await errors(lookup(scenario, program, email="ada@example.com"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    # The old address is free again.
    await scenario.member(program, email="ada@example.com")

    # Clearing a field through the mask removes it and frees the key.
    await update(scenario, mp.Member(name=name), "phone")
    assert (await get(scenario, name)).phone == ""
    await scenario.member(program, phone="+4915100000002")


async def test_update_to_a_taken_key_fails_and_changes_nothing(scenario, errors) -> None:
    program = await scenario.program()
    await scenario.member(program, external_id="ext-a", email="a@example.com", card_number="A-1")
    name = await scenario.member(program, external_id="ext-b", email="b@example.com")
    before = await get(scenario, name)

    for member, path, reason in [
        (mp.Member(name=name, email="A@example.com", given_name="X"), "email", "EMAIL_TAKEN"),
        (mp.Member(name=name, external_id="ext-a"), "external_id", "EXTERNAL_ID_TAKEN"),
        (mp.Member(name=name, card_number="A-1"), "card_number", "CARD_NUMBER_TAKEN"),
    ]:
        code, got, _ = await errors(update(scenario, member, path, "given_name"))
        assert (code, got) == (grpc.StatusCode.ALREADY_EXISTS, reason)

    assert await get(scenario, name) == before
    assert (await lookup(scenario, program, email="b@example.com")).member.name == name


async def test_bad_update_masks_are_invalid_update_mask(scenario, errors) -> None:
    program = await scenario.program()
    name = await scenario.member(program, given_name="Ada")
    before = await get(scenario, name)

    for paths in (
        [],
        ["state"],
        ["tier"],
        ["name"],
        ["create_time"],
        ["no_such_field"],
        ["given_name", "state"],
    ):
        code, reason, fields = await errors(
            update(
                scenario,
                mp.Member(name=name, given_name="Eve", state=mp.MEMBER_STATE_ERASED),
                *paths,
            )
        )
        assert (code, reason, fields) == (INVALID, "INVALID_UPDATE_MASK", ["update_mask"]), paths

    assert await get(scenario, name) == before


async def test_update_validates_values_and_names(scenario, errors) -> None:
    program = await scenario.program()
    name = await scenario.member(program, given_name="Ada")

    code, reason, fields = await errors(
        update(scenario, mp.Member(name=name, email="nope"), "email")
    )
    assert (code, reason, fields) == (INVALID, "INVALID_FIELD", ["member.email"])
    code, reason, fields = await errors(
        update(scenario, mp.Member(name="members/x", given_name="x"), "given_name")
    )
    assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["member.name"])
    code, reason, _ = await errors(
        update(
            scenario,
            mp.Member(name=f"programs/{program}/members/nobody", given_name="x"),
            "given_name",
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    assert (await get(scenario, name)).given_name == "Ada"


async def test_list_pages_through_every_member_once(scenario, errors) -> None:
    program = await scenario.program()
    names = {await scenario.member(program) for _ in range(5)}

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await scenario.client.members.ListMembers(
            mp.ListMembersRequest(parent=f"programs/{program}", page_size=2, page_token=token)
        )
        pages += 1
        assert len(page.members) <= 2
        seen.extend(m.name for m in page.members)
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert len(seen) == 5 and set(seen) == names
    assert seen == sorted(seen)  # by id

    exact = await scenario.client.members.ListMembers(
        mp.ListMembersRequest(parent=f"programs/{program}", page_size=5)
    )
    assert len(exact.members) == 5 and exact.next_page_token == ""


async def test_list_rejects_foreign_and_garbage_page_tokens(scenario, errors) -> None:
    program = await scenario.program()
    for _ in range(3):
        await scenario.member(program)
    first = await scenario.client.members.ListMembers(
        mp.ListMembersRequest(parent=f"programs/{program}", page_size=1)
    )
    assert first.next_page_token

    for request in [
        mp.ListMembersRequest(parent=f"programs/{program}", page_token="garbage!"),
        mp.ListMembersRequest(parent=f"programs/{program}", page_token="eyJ4IjoxfQ=="),
        # A token of one query cannot continue another.
        mp.ListMembersRequest(
            parent=f"programs/{program}",
            page_token=first.next_page_token,
            state=mp.MEMBER_STATE_ACTIVE,
        ),
    ]:
        code, reason, fields = await errors(scenario.client.members.ListMembers(request))
        assert (code, reason, fields) == (INVALID, "INVALID_PAGE_TOKEN", ["page_token"])

    code, reason, fields = await errors(
        scenario.client.members.ListMembers(
            mp.ListMembersRequest(parent=f"programs/{program}", page_size=-1)
        )
    )
    assert (code, fields) == (INVALID, ["page_size"])
    code, reason, _ = await errors(
        scenario.client.members.ListMembers(mp.ListMembersRequest(parent="programs/nope"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


async def test_list_filters_by_tier_state_and_join_time(scenario, clock) -> None:
    program = await scenario.program()
    await scenario.tier(program, "silver", 10_000)
    early = await scenario.member(program, join_time="2025-01-01T00:00:00Z")
    late = await scenario.member(program, join_time="2026-03-01T00:00:00Z")
    silver = await scenario.member(program, join_time="2026-03-01T00:00:01Z")
    erased = await scenario.member(program, join_time="2024-01-01T00:00:00Z")
    await scenario.purchase(silver, 10_000)
    await scenario.client.members.EraseMember(
        mp.EraseMemberRequest(request_id=uid("r"), name=erased)
    )

    by_tier = await list_all(scenario, program, tier=f"programs/{program}/tiers/silver")
    assert [m.name for m in by_tier] == [silver]
    assert by_tier[0].tier == f"programs/{program}/tiers/silver"
    by_state = await list_all(scenario, program, state=mp.MEMBER_STATE_ERASED)
    assert [m.name for m in by_state] == [erased]
    active = await list_all(scenario, program, state=mp.MEMBER_STATE_ACTIVE)
    assert {m.name for m in active} == {early, late, silver}
    joined = await list_all(scenario, program, join_time_after=ts(datetime(2026, 3, 1, tzinfo=UTC)))
    assert {m.name for m in joined} == {late, silver}
    both = await list_all(
        scenario,
        program,
        join_time_after=ts(datetime(2026, 3, 1, tzinfo=UTC)),
        tier=f"programs/{program}/tiers/silver",
    )
    assert [m.name for m in both] == [silver]
    await scenario.assert_balance_matches_ledger(silver)


async def test_lookup_by_each_key(scenario, errors) -> None:
    program = await scenario.program()
    name = await scenario.member(
        program,
        external_id="pos-77",
        email="Mixed.Case@Example.org",
        phone="+4915100000077",
        card_number="CARD-77",
    )
    await scenario.member(program)

    for key in [
        {"external_id": "pos-77"},
        {"email": "mixed.case@example.org"},
        {"email": "MIXED.CASE@EXAMPLE.ORG"},
        {"phone": "+4915100000077"},
        {"card_number": "CARD-77"},
    ]:
        assert (await lookup(scenario, program, **key)).member.name == name

    for key in [{"external_id": "pos-78"}, {"phone": "+4915100000078"}, {"card_number": "x"}]:
        code, reason, _ = await errors(lookup(scenario, program, **key))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    code, _, fields = await errors(
        scenario.client.members.LookupMember(mp.LookupMemberRequest(parent=f"programs/{program}"))
    )
    assert (code, fields) == (INVALID, ["key"])
    code, reason, _ = await errors(lookup(scenario, "no-such-program", external_id="x"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


async def test_erase_removes_personal_data_but_keeps_ledger_and_balance(
    scenario, errors, clock
) -> None:
    program = await scenario.program()
    name = await scenario.member(
        program,
        external_id="pos-9",
        given_name="Ada",
        family_name="Lovelace",
        email="ada@example.com",
        phone="+4915100000009",
        card_number="CARD-9",
        birth_date={"year": 1980, "month": 1, "day": 1},
        marketing_consent=True,
    )
    await scenario.purchase(name, 12_345)
    ledger_before = await scenario.ledger(name)
    balance_before = await scenario.balance(name)
    clock.advance(days=1)

    reply = await scenario.client.members.EraseMember(
        mp.EraseMemberRequest(request_id=uid("r"), name=name)
    )

    erased = await get(scenario, name)
    assert reply.member == erased
    assert erased.state == mp.MEMBER_STATE_ERASED
    assert (erased.given_name, erased.family_name, erased.email, erased.phone) == ("", "", "", "")
    assert not erased.HasField("birth_date")
    assert erased.marketing_consent is False
    assert erased.update_time.ToDatetime(tzinfo=UTC) == clock.now
    assert await scenario.ledger(name) == ledger_before
    assert await scenario.balance(name) == balance_before
    await scenario.assert_balance_matches_ledger(name)
    # The e-mail address and phone number are free for someone else.
    other = await scenario.member(program, email="ada@example.com", phone="+4915100000009")
    assert (await lookup(scenario, program, email="ada@example.com")).member.name == other
    # Erasing again is harmless.
    again = await scenario.client.members.EraseMember(
        mp.EraseMemberRequest(request_id=uid("r"), name=name)
    )
    assert again.member == erased


async def test_erased_member_cannot_be_updated_or_earn(scenario, errors) -> None:
    program = await scenario.program()
    name = await scenario.member(program, given_name="Ada")
    await scenario.purchase(name, 5_000)
    await scenario.client.members.EraseMember(mp.EraseMemberRequest(request_id=uid("r"), name=name))
    ledger = await scenario.ledger(name)

    code, reason, _ = await errors(
        update(scenario, mp.Member(name=name, given_name="Ada"), "given_name")
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_ERASED")
    code, reason, _ = await errors(scenario.purchase(name, 5_000))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_ERASED")

    assert (await get(scenario, name)).given_name == ""
    assert await scenario.ledger(name) == ledger
    balance = await scenario.assert_balance_matches_ledger(name)
    assert balance.available_points == 50


async def test_erase_unknown_member_is_not_found(scenario, errors) -> None:
    program = await scenario.program()
    code, reason, _ = await errors(
        scenario.client.members.EraseMember(
            mp.EraseMemberRequest(request_id=uid("r"), name=f"programs/{program}/members/ghost")
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    code, reason, fields = await errors(
        scenario.client.members.GetMember(mp.GetMemberRequest(name=f"programs/{program}/ghost"))
    )
    assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["name"])


async def test_enrolment_is_exactly_once_per_request_id(scenario, errors) -> None:
    program = await scenario.program()
    request = mp.EnrollMemberRequest(
        request_id=uid("r"), parent=f"programs/{program}", member=mp.Member(external_id="once")
    )

    first = await scenario.client.members.EnrollMember(request)
    second = await scenario.client.members.EnrollMember(request)

    assert first == second
    assert [m.name for m in await list_all(scenario, program)] == [first.member.name]
    changed = mp.EnrollMemberRequest()
    changed.CopyFrom(request)
    changed.member.external_id = "twice"
    code, reason, _ = await errors(scenario.client.members.EnrollMember(changed))
    assert (code, reason) == (INVALID, "REQUEST_ID_REUSED")
    code, reason, fields = await errors(
        scenario.client.members.ListMembers(
            mp.ListMembersRequest(parent=f"programs/{program}", tier="gold")
        )
    )
    assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["tier"])

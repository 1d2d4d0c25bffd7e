"""Bad requests are refused with the right code, reason and field, and write nothing."""

from __future__ import annotations

from typing import Any

import grpc

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def purchase_with(scenario: Any, member: str, total: int = 1_000, **changes: Any) -> Any:
    """A RecordPurchase call with `changes` applied to a valid request's purchase."""
    request = scenario.purchase_request(member, total, lines=changes.pop("lines", None))
    for path, value in changes.items():
        target = request.purchase
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return scenario.client.points.RecordPurchase(request)


async def test_bad_purchases_name_the_field_and_write_nothing(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 1_000)
    ledger = await scenario.ledger(member)

    cases: list[tuple[dict[str, Any], int, str, list[str]]] = [
        ({}, -1, "INVALID_FIELD", ["purchase.total.amount_minor"]),
        ({}, 10**15, "INVALID_FIELD", ["purchase.total.amount_minor"]),
        ({"order_id": ""}, 1_000, "INVALID_FIELD", ["purchase.order_id"]),
        ({"order_id": "o" * 201}, 1_000, "INVALID_FIELD", ["purchase.order_id"]),
        ({"order_id": "tab\there"}, 1_000, "INVALID_FIELD", ["purchase.order_id"]),
        ({"store_id": "s" * 201}, 1_000, "INVALID_FIELD", ["purchase.store_id"]),
        (
            {"lines": [("a", "x", 0, 1_000)]},
            0,
            "INVALID_FIELD",
            ["purchase.line_items[0].quantity"],
        ),
        (
            {"lines": [("a", "x", 1, 1_000), ("b", "x", 1, -5)]},
            995,
            "INVALID_FIELD",
            ["purchase.line_items[1].unit_price_minor"],
        ),
        (
            {"lines": [("a", "", 1, 1_000)]},
            1_000,
            "INVALID_FIELD",
            ["purchase.line_items[0].category"],
        ),
        (
            {"lines": [("s" * 201, "x", 1, 1_000)]},
            1_000,
            "INVALID_FIELD",
            ["purchase.line_items[0].sku"],
        ),
        (
            {"lines": [("a", "x", 10**7, 1)]},
            10**7,
            "INVALID_FIELD",
            ["purchase.line_items[0].quantity"],
        ),
        (
            {"total__currency_code": "XYZ"},
            1_000,
            "UNKNOWN_CURRENCY",
            ["purchase.total.currency_code"],
        ),
        (
            {"total__currency_code": "eur"},
            1_000,
            "UNKNOWN_CURRENCY",
            ["purchase.total.currency_code"],
        ),
        ({"total__currency_code": ""}, 1_000, "UNKNOWN_CURRENCY", ["purchase.total.currency_code"]),
        (
            {"total__currency_code": "USD"},
            1_000,
            "CURRENCY_MISMATCH",
            ["purchase.total.currency_code"],
        ),
        (
            {"lines": [("a", "x", 2, 400), ("b", "x", 1, 100)]},
            1_000,
            "LINE_ITEMS_MISMATCH",
            ["purchase.line_items"],
        ),
    ]
    for changes, total, reason, fields in cases:
        code, got_reason, got_fields = await errors(
            purchase_with(scenario, member, total, **dict(changes))
        )
        assert (code, got_reason, got_fields) == (INVALID, reason, fields), changes

    assert await scenario.ledger(member) == ledger
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 10


async def test_several_bad_fields_are_reported_together(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    code, reason, fields = await errors(
        purchase_with(scenario, member, -5, order_id="", store_id="s" * 300)
    )

    assert (code, reason) == (INVALID, "INVALID_FIELD")
    assert set(fields) == {
        "purchase.order_id",
        "purchase.store_id",
        "purchase.total.amount_minor",
    }
    assert await scenario.ledger(member) == []
    await scenario.assert_balance_matches_ledger(member)


async def test_missing_parts_of_a_purchase_are_named(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    complete = scenario.purchase_request(member, 1_000)

    for missing, field in (
        ("purchase", "purchase"),
        ("total", "purchase.total"),
        ("purchase_time", "purchase.purchase_time"),
    ):
        request = ps.RecordPurchaseRequest()
        request.CopyFrom(complete)
        if missing == "purchase":
            request.ClearField("purchase")
        else:
            request.purchase.ClearField(missing)
        code, _, fields = await errors(scenario.client.points.RecordPurchase(request))
        assert (code, fields) == (INVALID, [field])
    request = ps.RecordPurchaseRequest()
    request.CopyFrom(complete)
    request.request_id = ""
    code, _, fields = await errors(scenario.client.points.RecordPurchase(request))
    assert (code, fields) == (INVALID, ["request_id"])
    request.request_id = "r" * 129
    code, _, fields = await errors(scenario.client.points.RecordPurchase(request))
    assert (code, fields) == (INVALID, ["request_id"])
    assert await scenario.ledger(member) == []
    await scenario.assert_balance_matches_ledger(member)


async def test_malformed_and_unknown_names(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    for name in (
        "",
        "programs",
        f"programs/{program}",
        f"programs/{program}/members",
        f"programs/{program}/customers/x",
        f"programs/{program}/members/x/y",
        f"programs/UPPER/members/{member.rsplit('/', 1)[-1]}",
        f"programs/{program}/members/has space",
    ):
        code, reason, fields = await errors(scenario.purchase(name, 1_000))
        assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["member"]), name
        code, reason, fields = await errors(
            scenario.client.points.GetBalance(ps.GetBalanceRequest(member=name))
        )
        assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["member"]), name

    code, reason, _ = await errors(scenario.purchase(f"programs/{program}/members/ghost", 1_000))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    code, reason, _ = await errors(scenario.purchase("programs/no-such-program/members/x", 1_000))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    for call in (
        scenario.client.points.GetBalance(
            ps.GetBalanceRequest(member=f"programs/{program}/members/ghost")
        ),
        scenario.client.points.ListLedgerEntries(
            ps.ListLedgerEntriesRequest(parent=f"programs/{program}/members/ghost")
        ),
        scenario.client.points.ListTierChanges(
            ps.ListTierChangesRequest(parent=f"programs/{program}/members/ghost")
        ),
    ):
        code, reason, _ = await errors(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    code, reason, _ = await errors(
        scenario.client.points.GetBalance(
            ps.GetBalanceRequest(member="programs/no-such-program/members/x")
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    await scenario.assert_balance_matches_ledger(member)
    assert await scenario.ledger(member) == []


async def test_a_refused_order_id_can_be_used_once_the_request_is_fixed(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    code, reason, _ = await errors(
        purchase_with(scenario, member, 1_000, order_id="o-1", total__currency_code="USD")
    )
    assert (code, reason) == (INVALID, "CURRENCY_MISMATCH")
    reply = await scenario.purchase(member, 1_000, order_id="o-1")

    assert reply.points_awarded == 10
    await scenario.assert_balance_matches_ledger(member)


async def test_bad_return_requests(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 1_000, order_id="o")
    ledger = await scenario.ledger(member)
    base = ps.RecordReturnRequest(request_id="r-1", member=member, order_id="o", return_id="ret-1")
    base.return_time.CopyFrom(scenario.purchase_request(member, 1).purchase.purchase_time)

    for change, field in (
        ("order_id", "order_id"),
        ("return_id", "return_id"),
        ("return_time", "return_time"),
    ):
        request = ps.RecordReturnRequest()
        request.CopyFrom(base)
        request.request_id = f"r-{change}"
        request.ClearField(change)
        code, _, fields = await errors(scenario.client.points.RecordReturn(request))
        assert (code, fields) == (INVALID, [field]), change
    request = ps.RecordReturnRequest()
    request.CopyFrom(base)
    request.return_id = "x" * 201
    code, _, fields = await errors(scenario.client.points.RecordReturn(request))
    assert (code, fields) == (INVALID, ["return_id"])

    assert await scenario.ledger(member) == ledger
    await scenario.assert_balance_matches_ledger(member)

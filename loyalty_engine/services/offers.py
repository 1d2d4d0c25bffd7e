"""Rules and offers: running the rules for members, and the life of the offers they issue.

Rules run per member under the member's account lock, so a purchase's rule run and the
daily pass never interleave for one member; the unique (member, rule, period) key of an
offer is the second guard. A dry run decides exactly as a real run and writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from loyalty_engine.domain.calendar import add_months
from loyalty_engine.domain.errors import Aborted, FailedPrecondition, NotFound
from loyalty_engine.domain.members import Member, MemberState
from loyalty_engine.domain.money import format_money
from loyalty_engine.domain.offers import (
    CodeCheck,
    Offer,
    OfferKind,
    OfferRefusal,
    OfferState,
    check_code,
    new_offer_code,
    normalize_code,
    render_message,
)
from loyalty_engine.domain.program import Program
from loyalty_engine.domain.rules import (
    ActionKind,
    MemberFacts,
    PlannedAction,
    Rule,
    Trigger,
    decide,
)
from loyalty_engine.domain.segments import segment_by_id
from loyalty_engine.services.members import get_member, member_not_found
from loyalty_engine.services.points import lock_member, settle
from loyalty_engine.services.programs import load_program
from loyalty_engine.services.segments import refresh_segments
from loyalty_engine.storage.repositories import LockedAccount, MemberFilter
from loyalty_engine.storage.unit_of_work import UnitOfWork

CODE_ATTEMPTS = 8
MEMBER_BATCH = 500


@dataclass(frozen=True)
class RuleOutcome:
    """One action a rule took (or would take, on a dry run) for a member."""

    member_id: str
    rule_id: str
    label: str
    offer_id: str = ""


@dataclass
class RunReport:
    """What a rule run did."""

    members_evaluated: int = 0
    outcomes: list[RuleOutcome] | None = None
    offers: list[Offer] | None = None

    def __post_init__(self) -> None:
        self.outcomes = self.outcomes or []
        self.offers = self.offers or []


@dataclass(frozen=True)
class Ranking:
    """Ranks by 12-month spend (ties share the best rank) over the members with spend."""

    ranks: dict[str, int]

    @property
    def members(self) -> int:
        """Members with spend in the window."""
        return len(self.ranks)


@dataclass(frozen=True)
class Redeemed:
    """A code used on an order."""

    offer: Offer
    discount_minor: int
    currency_code: str


def tenure_years(member: Member, now: datetime) -> int:
    """Whole years since the member joined (0 before the first anniversary)."""
    join = member.join_time or member.create_time or now
    years = now.year - join.year - ((now.month, now.day) < (join.month, join.day))
    return max(0, years)


def _needed(rules: Sequence[Rule]) -> frozenset[str] | None:
    """The context names the rules' conditions read; None when a condition does not say."""
    names: set[str] = set()
    for rule in rules:
        variables = getattr(rule.condition, "variables", None)
        if variables is None:
            return None
        names.update(variables)
    return frozenset(names)


async def member_facts(
    uow: UnitOfWork,
    program: Program,
    member: Member,
    now: datetime,
    ranking: Ranking | None,
    needed: frozenset[str] | None = None,
    locked: LockedAccount | None = None,
) -> MemberFacts:
    """What the rules may look at for one member (statistics live, scores as last refreshed).

    With `needed`, the RFM scores and the spend rank are read only if a condition uses them:
    on the purchase path they are the costly part, and most purchase rules do not.
    """
    program_id, member_id = program.program_id, member.member_id
    if locked is None:
        locked = await uow.accounts.lock(program_id, member_id, for_update=False)
    if locked is None:
        raise member_not_found(program_id, member_id)
    spend_12m, orders_12m = await uow.segments.window_stats(
        program_id, member_id, add_months(now, -12)
    )
    scores = (
        await uow.segments.scores(program_id, member_id)
        if needed is None or "rfm" in needed
        else None
    )
    if ranking is not None:
        rank, members = ranking.ranks.get(member_id, 0), ranking.members
    elif needed is None or "top_customer" in needed:
        rank, members = await uow.offers.spend_rank(program_id, member_id)
    else:
        rank, members = 0, 0
    return MemberFacts(
        member_id=member_id,
        first_name=member.given_name or "",
        birth_date=member.birth_date,
        has_email=bool(member.email),
        marketing_consent=member.marketing_consent,
        tier=locked.tier.tier_id or "",
        tenure_years=tenure_years(member, now),
        orders=locked.stats.order_count,
        spend_minor=locked.stats.total_spend_minor,
        spend_12m_minor=spend_12m,
        orders_12m=orders_12m,
        last_purchase_time=locked.stats.last_purchase_time,
        recency=scores.recency if scores else 0,
        frequency=scores.frequency if scores else 0,
        monetary=scores.monetary if scores else 0,
        segment=scores.segment_id if scores else "",
        top_rank=rank,
        top_members=members,
        flags=await uow.offers.flags(program_id, member_id),
        past_offers=await uow.offers.past_offers(program_id, member_id),
    )


def _message_values(program: Program, facts: MemberFacts, offer: Offer) -> dict[str, str]:
    last_day = (offer.end_time - timedelta(microseconds=1)).date()
    return {
        "first_name": facts.first_name or "member",
        "tenure_years": str(facts.tenure_years),
        "code": offer.code,
        "percent_off": str(offer.percent_off),
        "amount_off": format_money(offer.amount_off_minor, program.currency_code),
        "bonus_points": str(offer.bonus_points),
        "sku": offer.sku,
        "valid_until": last_day.isoformat(),
        "min_order": format_money(offer.min_order_minor, program.currency_code),
    }


async def _issue(
    uow: UnitOfWork, program: Program, facts: MemberFacts, action: PlannedAction, now: datetime
) -> Offer | None:
    template = action.offer
    assert template is not None and action.start_time and action.end_time
    offer_id = uuid.uuid4().hex
    code = template.shared_code
    if template.code_pattern:
        for _ in range(CODE_ATTEMPTS):
            candidate = new_offer_code(template.code_pattern)
            if await uow.offers.claim_code(
                program.program_id, candidate, facts.member_id, offer_id
            ):
                code = candidate
                break
        else:
            raise Aborted("CODE_COLLISION", "could not find a free offer code; retry")
    offer = Offer(
        offer_id=offer_id,
        member_id=facts.member_id,
        rule_id=action.rule_id,
        kind=template.kind,
        code=code,
        message="",
        start_time=action.start_time,
        end_time=action.end_time,
        period_key=action.period_key,
        create_time=now,
        percent_off=template.percent_off,
        amount_off_minor=template.amount_off_minor,
        currency_code=program.currency_code,
        bonus_points=template.bonus_points,
        sku=template.sku,
        min_order_minor=template.min_order_minor,
        uses_per_member=template.uses_per_member,
        total_uses=template.total_uses,
    )
    offer.message = render_message(template.message, _message_values(program, facts, offer))
    if not await uow.offers.add(program.program_id, offer):
        return None  # issued for this period by a run that got there first
    return offer


async def apply_rules(
    uow: UnitOfWork,
    program: Program,
    rules: Sequence[Rule],
    member: Member,
    now: datetime,
    trigger: Trigger,
    *,
    dry_run: bool = False,
    ranking: Ranking | None = None,
) -> tuple[list[RuleOutcome], list[Offer]]:
    """Decide and (unless a dry run) carry out the rules for one member."""
    if member.state is not MemberState.ACTIVE or not rules:
        return [], []
    locked = None
    if not dry_run:
        # Serializes rule runs for one member (purchase, daily pass, RunRules).
        locked = await uow.accounts.lock(program.program_id, member.member_id)
    facts = await member_facts(uow, program, member, now, ranking, _needed(rules), locked)
    outcomes: list[RuleOutcome] = []
    issued: list[Offer] = []
    for action in decide(tuple(rules), facts, now, trigger):
        if dry_run:
            outcomes.append(RuleOutcome(member.member_id, action.rule_id, action.label))
            continue
        if action.kind is ActionKind.SET_FLAG:
            await uow.offers.set_flag(
                program.program_id, member.member_id, action.flag, action.rule_id, now
            )
        elif action.kind is ActionKind.CLEAR_FLAG:
            await uow.offers.clear_flag(program.program_id, member.member_id, action.flag)
        else:
            offer = await _issue(uow, program, facts, action, now)
            if offer is None:
                continue
            issued.append(offer)
            outcomes.append(
                RuleOutcome(member.member_id, action.rule_id, action.label, offer.offer_id)
            )
            continue
        outcomes.append(RuleOutcome(member.member_id, action.rule_id, action.label))
    return outcomes, issued


async def rules_after_purchase(
    rules: Sequence[Rule], uow: UnitOfWork, program_id: str, member_id: str, now: datetime
) -> list[Offer]:
    """Run the purchase rules for the member who just bought; the offers they issued."""
    purchase_rules = [r for r in rules if Trigger.PURCHASE in r.triggers]
    if not purchase_rules:
        return []
    program = await load_program(uow, program_id)
    member = await get_member(uow, program_id, member_id)
    _, issued = await apply_rules(uow, program, purchase_rules, member, now, Trigger.PURCHASE)
    return issued


async def run_rules(
    uow: UnitOfWork,
    rules: Sequence[Rule],
    program_id: str,
    now: datetime,
    *,
    member_id: str | None = None,
    segment_id: str | None = None,
    dry_run: bool = False,
    trigger: Trigger = Trigger.ON_DEMAND,
) -> RunReport:
    """Run the rules for one member, one segment or (neither given) the whole program."""
    program = await load_program(uow, program_id)
    report = RunReport()
    if segment_id is not None:
        segment_by_id(segment_id)
    if await uow.segments.last_refresh(program_id) is None:
        # A dry run's transaction is never committed, so even this leaves nothing behind.
        await refresh_segments(uow, program_id, now)
    ranking = Ranking(await uow.offers.spend_ranks(program_id))

    async def one(member: Member) -> None:
        outcomes, offers = await apply_rules(
            uow, program, rules, member, now, trigger, dry_run=dry_run, ranking=ranking
        )
        report.members_evaluated += 1
        assert report.outcomes is not None and report.offers is not None
        report.outcomes.extend(outcomes)
        report.offers.extend(offers)

    if member_id is not None:
        await one(await get_member(uow, program_id, member_id))
        return report
    after = ""
    while True:
        if segment_id is not None:
            ids = [
                m.member_id
                for m in await uow.segments.segment_members(
                    program_id, segment_id, after, MEMBER_BATCH
                )
            ]
            members = [m for m in [await uow.members.get(program_id, i) for i in ids] if m]
        else:
            members = await uow.members.list_after(
                program_id, after, MEMBER_BATCH, MemberFilter(state=MemberState.ACTIVE)
            )
            ids = [m.member_id for m in members]
        for member in members:
            await one(member)
        if len(ids) < MEMBER_BATCH:
            return report
        after = ids[-1]


# --- offers --------------------------------------------------------------------------------


def _offer_not_found(offer_id: str) -> NotFound:
    return NotFound("OFFER_NOT_FOUND", f"offer {offer_id!r} not found")


async def get_offer(uow: UnitOfWork, program_id: str, offer_id: str) -> Offer:
    """An offer with its events, or NOT_FOUND."""
    offer = await uow.offers.get(program_id, offer_id)
    if offer is None:
        raise _offer_not_found(offer_id)
    offer.events = await uow.offers.events(program_id, offer)
    return offer


async def list_offers(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    now: datetime,
    *,
    include_inactive: bool,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Offer]:
    """A member's offers, newest first; only usable ones unless `include_inactive`."""
    await get_member(uow, program_id, member_id)
    return await uow.offers.list_for_member(
        program_id,
        member_id,
        active_at=None if include_inactive else now,
        before=before,
        limit=limit,
    )


async def _check(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    code: str,
    total_minor: int,
    currency: str,
    now: datetime,
) -> CodeCheck:
    await get_member(uow, program_id, member_id)
    offer = await uow.offers.find_by_code(program_id, member_id, normalize_code(code))
    total_left = None
    if offer is not None and offer.total_uses:
        total_left = offer.total_uses - await uow.offers.total_uses(program_id, offer.rule_id)
    return check_code(offer, total_minor, currency, now, total_left)


async def validate_offer_code(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    code: str,
    total_minor: int,
    currency: str,
    now: datetime,
) -> CodeCheck:
    """Whether a code applies to a member's order: the discount, or the reason it does not."""
    return await _check(uow, program_id, member_id, code, total_minor, currency, now)


async def redeem_offer_code(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    code: str,
    order_id: str,
    total_minor: int,
    currency: str,
    now: datetime,
) -> Redeemed:
    """Use a code on an order: exact under concurrency (member lock, then conditional updates)."""
    program = await load_program(uow, program_id)
    locked = await lock_member(uow, program, member_id)
    result = await _check(uow, program_id, member_id, code, total_minor, currency, now)
    result.raise_if_refused(code)
    offer = result.offer
    assert offer is not None
    used_up = offer.uses + 1 >= offer.uses_per_member
    limit_reached = FailedPrecondition(
        OfferRefusal.USAGE_LIMIT_REACHED.value, "the offer's usage limit is reached", {"code": code}
    )
    if not await uow.offers.take_member_use(program_id, offer, now, used_up):
        raise limit_reached
    if offer.total_uses and not await uow.offers.take_total_use(
        program_id, offer.rule_id, offer.total_uses
    ):
        raise limit_reached
    offer.uses += 1
    if used_up:
        offer.state, offer.redeem_time = OfferState.REDEEMED, now
    await uow.offers.add_event(
        program_id, offer, OfferState.REDEEMED, now, order_id, result.discount_minor
    )
    if offer.kind is OfferKind.BONUS_POINTS:
        await settle(uow, program, locked, now)
        locked.account.adjust(
            offer.bonus_points,
            now=now,
            reason=f"OFFER_BONUS: {offer.rule_id}",
            actor=f"offer {offer.offer_id}",
            expiry=program.expiry,
        )
        await uow.accounts.save(locked, now)
    offer.events = await uow.offers.events(program_id, offer)
    return Redeemed(offer, result.discount_minor, program.currency_code)


async def revoke_offer(uow: UnitOfWork, program_id: str, offer_id: str, now: datetime) -> Offer:
    """Withdraw an offer; its code stops working. Revoking a revoked offer changes nothing."""
    offer = await get_offer(uow, program_id, offer_id)
    if offer.state is OfferState.REVOKED:
        return offer
    await uow.accounts.lock(program_id, offer.member_id)
    await uow.offers.revoke(program_id, offer, now)
    await uow.offers.add_event(program_id, offer, OfferState.REVOKED, now)
    offer.state, offer.revoke_time = OfferState.REVOKED, now
    offer.events = await uow.offers.events(program_id, offer)
    return offer

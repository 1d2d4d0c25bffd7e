"""Rules and offers: running the rules for members, and the life of the offers they issue.

Rules run a page of members at a time: a handful of queries load the page's facts, the
rules decide in memory, and a handful of statements write the flags and offers. The page's
account rows are locked first (in member id order), the same lock a purchase takes, so a
purchase's rule run and the daily pass never interleave for one member; the unique
(member, rule, period) key of an offer is the second guard. The purchase hook is a page of
one. A program or segment run commits page by page, so it never holds more than one page
of locks, and its report keeps counts and a bounded sample, not every outcome. A dry run
decides exactly as a real run and commits nothing.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from loyalty_engine.domain.calendar import add_months
from loyalty_engine.domain.errors import Aborted, FailedPrecondition, NotFound
from loyalty_engine.domain.members import MemberState
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
from loyalty_engine.storage.offers import RuleSubject
from loyalty_engine.storage.repositories import LockedAccount
from loyalty_engine.storage.unit_of_work import UnitOfWork

CODE_ATTEMPTS = 8
# Members per page of a program or segment run: one transaction, a handful of statements.
MEMBER_BATCH = 1000
# Outcomes a run's report keeps (the first ones, in member order); the rest are counted.
OUTCOME_SAMPLE = 1000


@dataclass(frozen=True)
class RuleOutcome:
    """One action a rule took (or would take, on a dry run) for a member."""

    member_id: str
    rule_id: str
    label: str
    offer_id: str = ""


@dataclass
class RulesApplied:
    """What the rules did for some members: every outcome and the offers issued."""

    members: int = 0
    outcomes: list[RuleOutcome] = field(default_factory=list)
    offers: list[Offer] = field(default_factory=list)


@dataclass
class RunReport:
    """What a rule run did: counts per action, and the first `sample_size` outcomes."""

    members_evaluated: int = 0
    action_counts: Counter[str] = field(default_factory=Counter)
    offers_issued: int = 0
    outcomes: list[RuleOutcome] = field(default_factory=list)
    sample_size: int = OUTCOME_SAMPLE

    @property
    def actions(self) -> int:
        """Actions taken (or that would be), all of them."""
        return sum(self.action_counts.values())

    @property
    def sampled(self) -> bool:
        """Whether `outcomes` holds only some of the actions."""
        return self.actions > len(self.outcomes)

    def add(self, applied: RulesApplied) -> None:
        """Count a page's outcomes and keep them while the sample has room."""
        self.members_evaluated += applied.members
        self.offers_issued += len(applied.offers)
        self.action_counts.update(o.label for o in applied.outcomes)
        room = self.sample_size - len(self.outcomes)
        if room > 0:
            self.outcomes.extend(applied.outcomes[:room])


@dataclass(frozen=True)
class Ranking:
    """Ranks by 12-month spend as scored (ties share the best rank), among members with spend.

    Held as the distribution of spend values, not a rank per member: a program of a million
    members has far fewer distinct spends, and a page's ranks follow from it.
    """

    spends: tuple[int, ...]  # distinct spends > 0, ascending
    at_most: tuple[int, ...]  # members with a spend up to spends[i]

    @classmethod
    def of(cls, distribution: Sequence[tuple[int, int]]) -> Ranking:
        """From (spend, members) pairs, ascending by spend."""
        running, at_most = 0, []
        for _, count in distribution:
            running += count
            at_most.append(running)
        return cls(tuple(spend for spend, _ in distribution), tuple(at_most))

    @property
    def members(self) -> int:
        """Members with spend in the window."""
        return self.at_most[-1] if self.at_most else 0

    def rank(self, spend: int) -> int:
        """The rank of a spend: 1 + the members with more; 0 without spend."""
        if spend <= 0:
            return 0
        i = bisect_right(self.spends, spend)
        return self.members - (self.at_most[i - 1] if i else 0) + 1


@dataclass(frozen=True)
class Redeemed:
    """A code used on an order."""

    offer: Offer
    discount_minor: int
    currency_code: str


def tenure_years(join: datetime, now: datetime) -> int:
    """Whole years since the member joined (0 before the first anniversary)."""
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


async def load_facts(
    uow: UnitOfWork,
    program: Program,
    subjects: Sequence[RuleSubject],
    now: datetime,
    ranking: Ranking | None,
    needed: frozenset[str] | None = None,
) -> list[MemberFacts]:
    """What the rules may look at for the active ones of some members, in a few queries.

    Statistics are live (12-month spend and orders summed from the purchases), RFM scores
    and the spend rank as last refreshed. With `needed`, the scores and the rank are read
    only if a condition uses them: most purchase rules do not. Without a `ranking` (one
    member, on the purchase path) the rank is counted for the member alone.
    """
    program_id = program.program_id
    active = [s for s in subjects if s.state is MemberState.ACTIVE]
    ids = [s.member_id for s in active]
    if not ids:
        return []
    want_rfm = needed is None or "rfm" in needed
    want_rank = needed is None or "top_customer" in needed
    windows = await uow.segments.window_stats_of(program_id, ids, add_months(now, -12))
    scores = (
        await uow.segments.scores_of(program_id, ids)
        if want_rfm or (want_rank and ranking is not None)
        else {}
    )
    flags = await uow.offers.flags_of(program_id, ids)
    past = await uow.offers.past_offers_of(program_id, ids)
    facts = []
    for s in active:
        scored = scores.get(s.member_id)
        rank = members = 0
        if want_rank and ranking is not None:
            rank, members = ranking.rank(scored[1] if scored else 0), ranking.members
        elif want_rank:
            rank, members = await uow.offers.spend_rank(program_id, s.member_id)
        spend_12m, orders_12m = windows.get(s.member_id, (0, 0))
        facts.append(
            MemberFacts(
                member_id=s.member_id,
                first_name=s.given_name or "",
                birth_date=s.birth_date,
                has_email=s.has_email,
                marketing_consent=s.marketing_consent,
                tier=s.tier_id or "",
                tenure_years=tenure_years(s.join_time or s.create_time or now, now),
                orders=s.order_count,
                spend_minor=s.total_spend_minor,
                spend_12m_minor=spend_12m,
                orders_12m=orders_12m,
                last_purchase_time=s.last_purchase_time,
                recency=scored[0].recency if scored and want_rfm else 0,
                frequency=scored[0].frequency if scored and want_rfm else 0,
                monetary=scored[0].monetary if scored and want_rfm else 0,
                segment=scored[0].segment_id if scored and want_rfm else "",
                top_rank=rank,
                top_members=members,
                flags=flags.get(s.member_id, set()),
                past_offers=past.get(s.member_id, {}),
            )
        )
    return facts


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


def _draft(program: Program, facts: MemberFacts, action: PlannedAction, now: datetime) -> Offer:
    template = action.offer
    assert template is not None and action.start_time and action.end_time
    return Offer(
        offer_id=uuid.uuid4().hex,
        member_id=facts.member_id,
        rule_id=action.rule_id,
        kind=template.kind,
        code="" if template.code_pattern else template.shared_code,
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


async def _claim_codes(
    uow: UnitOfWork, program_id: str, drafts: Sequence[Offer], patterns: Sequence[str]
) -> None:
    """Give each draft with a pattern a unique code: a claim per round, redraws for collisions."""
    pending = [i for i, pattern in enumerate(patterns) if pattern]
    for _ in range(CODE_ATTEMPTS):
        if not pending:
            return
        candidates: dict[str, int] = {}
        for i in pending:
            for _ in range(CODE_ATTEMPTS):  # a page may draw the same code twice
                code = new_offer_code(patterns[i])
                if code not in candidates:
                    candidates[code] = i
                    break
        claimed = await uow.offers.claim_codes(
            program_id,
            [(code, drafts[i].member_id, drafts[i].offer_id) for code, i in candidates.items()],
        )
        for code, i in candidates.items():
            if code in claimed:
                drafts[i].code = code
        pending = [i for i in pending if not drafts[i].code]
    if pending:
        raise Aborted("CODE_COLLISION", "could not find a free offer code; retry")


async def _issue(
    uow: UnitOfWork,
    program: Program,
    planned: Sequence[tuple[MemberFacts, PlannedAction]],
    now: datetime,
) -> list[Offer | None]:
    """Issue the planned offers in a few statements; None where the period was taken."""
    if not planned:
        return []
    drafts = [_draft(program, facts, action, now) for facts, action in planned]
    patterns = [action.offer.code_pattern if action.offer else "" for _, action in planned]
    await _claim_codes(uow, program.program_id, drafts, patterns)
    for (facts, action), offer in zip(planned, drafts, strict=True):
        assert action.offer is not None
        offer.message = render_message(action.offer.message, _message_values(program, facts, offer))
    inserted = await uow.offers.add_many(program.program_id, drafts)
    # Issued for this period by a run that got there first: its code is free again.
    await uow.offers.release_codes(
        program.program_id,
        [
            (offer.code, offer.offer_id)
            for offer, pattern in zip(drafts, patterns, strict=True)
            if pattern and offer.offer_id not in inserted
        ],
    )
    return [offer if offer.offer_id in inserted else None for offer in drafts]


async def _apply(
    uow: UnitOfWork,
    program: Program,
    rules: Sequence[Rule],
    subjects: Sequence[RuleSubject],
    now: datetime,
    trigger: Trigger,
    *,
    dry_run: bool,
    ranking: Ranking | None,
) -> RulesApplied:
    """Decide and (unless a dry run) carry out the rules for loaded (and locked) members."""
    applied = RulesApplied(members=len(subjects))
    if not rules:
        return applied
    facts = await load_facts(uow, program, subjects, now, ranking, _needed(rules))
    in_order = tuple(rules)
    decided = [(f, decide(in_order, f, now, trigger)) for f in facts]
    if dry_run:
        applied.outcomes = [
            RuleOutcome(f.member_id, a.rule_id, a.label) for f, actions in decided for a in actions
        ]
        return applied
    # A flag's net change per member: clear every flag any action clears, then set the
    # flags whose last action sets them (as one action after the other would leave them).
    cleared: set[tuple[str, str]] = set()
    last: dict[tuple[str, str], PlannedAction] = {}
    to_issue: list[tuple[MemberFacts, PlannedAction]] = []
    for f, actions in decided:
        for a in actions:
            if a.kind is ActionKind.ISSUE_OFFER:
                to_issue.append((f, a))
                continue
            if a.kind is ActionKind.CLEAR_FLAG:
                cleared.add((f.member_id, a.flag))
            last[(f.member_id, a.flag)] = a
    await uow.offers.clear_flags(program.program_id, sorted(cleared))
    await uow.offers.set_flags(
        program.program_id,
        [(m, flag, a.rule_id) for (m, flag), a in last.items() if a.kind is ActionKind.SET_FLAG],
        now,
    )
    offers = iter(await _issue(uow, program, to_issue, now))
    for f, actions in decided:
        for a in actions:
            if a.kind is not ActionKind.ISSUE_OFFER:
                applied.outcomes.append(RuleOutcome(f.member_id, a.rule_id, a.label))
                continue
            offer = next(offers)
            if offer is not None:
                applied.offers.append(offer)
                applied.outcomes.append(
                    RuleOutcome(f.member_id, a.rule_id, a.label, offer.offer_id)
                )
    return applied


async def apply_rules(
    uow: UnitOfWork,
    program: Program,
    rules: Sequence[Rule],
    member_ids: Sequence[str],
    now: datetime,
    trigger: Trigger,
    *,
    dry_run: bool = False,
    ranking: Ranking | None = None,
) -> RulesApplied:
    """Decide and (unless a dry run) carry out the rules for some members, in one transaction.

    Their accounts are locked first (not on a dry run); NOT_FOUND for an unknown member.
    """
    subjects = await uow.offers.subjects(program.program_id, member_ids, lock=not dry_run)
    if len(subjects) < len(set(member_ids)):
        found = {s.member_id for s in subjects}
        missing = next(m for m in member_ids if m not in found)
        raise member_not_found(program.program_id, missing)
    return await _apply(
        uow, program, rules, subjects, now, trigger, dry_run=dry_run, ranking=ranking
    )


def subject_of(locked: LockedAccount) -> RuleSubject:
    """The member as the rules see them, from their account as this transaction holds it
    (the purchase's statistics and tier included): what `subjects` would read, unread."""
    profile = locked.profile
    if profile is None:
        raise ValueError("the account was loaded without the member's profile")
    return RuleSubject(
        member_id=locked.member_id,
        state=locked.member_state,
        given_name=profile.given_name,
        has_email=profile.has_email,
        birth_date=profile.birth_date,
        join_time=profile.join_time,
        create_time=profile.create_time,
        marketing_consent=profile.marketing_consent,
        tier_id=locked.tier.tier_id,
        order_count=locked.stats.order_count,
        total_spend_minor=locked.stats.total_spend_minor,
        last_purchase_time=locked.stats.last_purchase_time,
    )


async def rules_after_purchase(
    rules: Sequence[Rule], uow: UnitOfWork, locked: LockedAccount, now: datetime
) -> list[Offer]:
    """Run the purchase rules for the member who just bought, whose account the purchase
    holds locked; the offers they issued."""
    purchase_rules = [r for r in rules if Trigger.PURCHASE in r.triggers]
    if not purchase_rules:
        return []
    program = await load_program(uow, locked.program_id)
    applied = await _apply(
        uow,
        program,
        purchase_rules,
        [subject_of(locked)],
        now,
        Trigger.PURCHASE,
        dry_run=False,
        ranking=None,
    )
    return applied.offers


async def run_rules_for_member(
    uow: UnitOfWork,
    rules: Sequence[Rule],
    program_id: str,
    member_id: str,
    now: datetime,
    *,
    dry_run: bool = False,
    trigger: Trigger = Trigger.ON_DEMAND,
) -> RunReport:
    """Run the rules for one member in the caller's transaction (committed by the caller)."""
    program = await load_program(uow, program_id)
    if await uow.segments.last_refresh(program_id) is None:
        # A dry run's transaction is never committed, so even this leaves nothing behind.
        await refresh_segments(uow, program_id, now)
    report = RunReport()
    report.add(await apply_rules(uow, program, rules, [member_id], now, trigger, dry_run=dry_run))
    return report


async def run_rules(
    unit_of_work: Callable[[], UnitOfWork],
    rules: Sequence[Rule],
    program_id: str,
    now: datetime,
    *,
    segment_id: str | None = None,
    dry_run: bool = False,
    trigger: Trigger = Trigger.ON_DEMAND,
    page_size: int = MEMBER_BATCH,
    sample_size: int = OUTCOME_SAMPLE,
) -> RunReport:
    """Run the rules for one segment or the whole program, one transaction per page.

    Each page is committed as it is done (never on a dry run), so a run that fails part way
    keeps the pages before; running again is safe, as offers are unique per rule and period
    and flags are set or cleared, not toggled. The spend ranking is read once, at the start.
    """
    if segment_id is not None:
        segment_by_id(segment_id)
    report = RunReport(sample_size=sample_size)
    async with unit_of_work() as uow:
        program = await load_program(uow, program_id)
        scored = await uow.segments.last_refresh(program_id) is not None
        if not scored:
            await refresh_segments(uow, program_id, now)
        ranking = Ranking.of(await uow.offers.spend_distribution(program_id))
        walk = partial(
            _walk,
            report=report,
            program=program,
            rules=rules,
            now=now,
            trigger=trigger,
            segment_id=segment_id,
            dry_run=dry_run,
            ranking=ranking,
            page_size=page_size,
        )
        if not scored and dry_run:
            # The scores the rules need were never computed, and a dry run may not write
            # them: they were computed in this transaction, which is rolled back, so every
            # page runs in it (a program's first run only; the daily pass refreshes scores).

            @asynccontextmanager
            async def same_transaction() -> AsyncIterator[UnitOfWork]:
                yield uow

            await walk(same_transaction)
            return report
        if not scored:
            await uow.commit()

    @asynccontextmanager
    async def own_transaction() -> AsyncIterator[UnitOfWork]:
        async with unit_of_work() as page_uow:
            yield page_uow
            if not dry_run:
                await page_uow.commit()

    await walk(own_transaction)
    return report


async def _walk(
    page: Callable[[], AbstractAsyncContextManager[UnitOfWork]],
    report: RunReport,
    program: Program,
    rules: Sequence[Rule],
    now: datetime,
    trigger: Trigger,
    segment_id: str | None,
    *,
    dry_run: bool,
    ranking: Ranking,
    page_size: int,
) -> None:
    """Page through the program's active members (or a segment's members) by id."""
    program_id, after = program.program_id, ""
    while True:
        async with page() as uow:
            if segment_id is None:
                subjects = await uow.offers.active_subjects_after(
                    program_id, after, page_size, lock=not dry_run
                )
                listed = [s.member_id for s in subjects]
            else:
                listed = [
                    m.member_id
                    for m in (
                        await uow.segments.segment_members(program_id, segment_id, after, page_size)
                    ).members
                ]
                subjects = await uow.offers.subjects(program_id, listed, lock=not dry_run)
            report.add(
                await _apply(
                    uow, program, rules, subjects, now, trigger, dry_run=dry_run, ranking=ranking
                )
            )
        if len(listed) < page_size:
            return
        after = listed[-1]


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

"""Rules: a condition on a member's facts, and the flags and offers it sets or issues.

Pure: the condition is any callable from the member context (plain dicts, lists, strings
and ints, as documented in rules/README.md) to a bool; the rule files compile CEL into one
(``loyalty_engine.rule_files``). Deciding what to do for a member needs no I/O: the facts
carry the flags the member holds and the offers each rule issued before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from loyalty_engine.domain.offers import (
    OfferTemplate,
    days_since_birthday,
    days_to_birthday,
    utc_today,
    validity_window,
)

Condition = Callable[[Mapping[str, Any]], bool]


class Trigger(StrEnum):
    """When a rule runs."""

    PURCHASE = "purchase"  # after each purchase, for that member
    DAILY = "daily"  # the daily pass inside `serve`
    ON_DEMAND = "on_demand"  # RunRules and `loyalty-engine rules run`


class ActionKind(StrEnum):
    """What a rule does when its condition holds (or, for `otherwise`, does not)."""

    SET_FLAG = "SET_FLAG"
    CLEAR_FLAG = "CLEAR_FLAG"
    ISSUE_OFFER = "ISSUE_OFFER"


@dataclass(frozen=True)
class Action:
    """One action: a flag to set or clear, or an offer to issue."""

    kind: ActionKind
    flag: str = ""
    offer: OfferTemplate | None = None


@dataclass(frozen=True)
class Rule:
    """One rule file, compiled."""

    rule_id: str
    description: str
    condition: Condition
    source: str
    actions: tuple[Action, ...]
    otherwise: tuple[Action, ...] = ()
    triggers: frozenset[Trigger] = frozenset(Trigger)

    @cached_property
    def issues_only(self) -> bool:
        """Whether the rule only issues offers when its condition holds (and else nothing)."""
        return not self.otherwise and all(a.kind is ActionKind.ISSUE_OFFER for a in self.actions)


@dataclass(frozen=True)
class PastOffers:
    """What a rule issued to a member before: the latest issue time and the periods used."""

    last_issue_time: datetime | None = None
    period_keys: frozenset[str] = frozenset()


_NONE_BEFORE = PastOffers()


@dataclass
class MemberFacts:
    """Everything a rule may look at for one member (the context's source)."""

    member_id: str
    first_name: str = ""
    birth_date: date | None = None
    has_email: bool = False
    marketing_consent: bool = False
    tier: str = ""
    tenure_years: int = 0
    orders: int = 0
    spend_minor: int = 0
    spend_12m_minor: int = 0
    orders_12m: int = 0
    last_purchase_time: datetime | None = None
    recency: int = 0
    frequency: int = 0
    monetary: int = 0
    segment: str = ""
    top_rank: int = 0
    top_members: int = 0
    flags: set[str] = field(default_factory=set)
    past_offers: dict[str, PastOffers] = field(default_factory=dict)


def member_context(facts: MemberFacts, now: datetime) -> dict[str, Any]:
    """The CEL context of a member (documented in rules/README.md); -1 means "none"."""
    today = utc_today(now)
    birth = facts.birth_date
    last = facts.last_purchase_time
    return {
        "profile": {
            "first_name": facts.first_name,
            "has_birth_date": birth is not None,
            "has_email": facts.has_email,
            "marketing_consent": facts.marketing_consent,
        },
        "tier": facts.tier,
        "tenure_years": facts.tenure_years,
        "days_to_birthday": days_to_birthday(birth, today) if birth else -1,
        "days_since_birthday": days_since_birthday(birth, today) if birth else -1,
        "statistics": {
            "orders": facts.orders,
            "spend_minor": facts.spend_minor,
            "spend_12m_minor": facts.spend_12m_minor,
            "orders_12m": facts.orders_12m,
            "last_purchase_days_ago": (today - utc_today(last)).days if last else -1,
        },
        "rfm": {
            "recency": facts.recency,
            "frequency": facts.frequency,
            "monetary": facts.monetary,
            "segment": facts.segment,
        },
        "flags": sorted(facts.flags),
        "top_customer": {"rank": facts.top_rank, "members": facts.top_members},
    }


@dataclass(frozen=True)
class PlannedAction:
    """An action decided for a member: a flag change, or an offer with its window."""

    rule_id: str
    kind: ActionKind
    flag: str = ""
    offer: OfferTemplate | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    period_key: str = ""

    @property
    def label(self) -> str:
        """ "SET_FLAG top_customer", "ISSUE_OFFER birthday"."""
        return f"{self.kind.value} {self.flag or self.rule_id}"


def may_issue(
    template: OfferTemplate, past: PastOffers, now: datetime, birth_date: date | None
) -> tuple[datetime, datetime, str] | None:
    """The window of an offer the rule may issue now, or None (no window, cooldown, done)."""
    window = validity_window(template.validity, now, birth_date)
    if window is None or window[2] in past.period_keys:
        return None
    if (
        template.cooldown_days
        and past.last_issue_time is not None
        and now - past.last_issue_time < timedelta(days=template.cooldown_days)
    ):
        return None
    return window


def decide(
    rules: tuple[Rule, ...], facts: MemberFacts, now: datetime, trigger: Trigger
) -> list[PlannedAction]:
    """What the rules do for a member now, in rule order; later rules see earlier flags."""
    planned: list[PlannedAction] = []
    flags = set(facts.flags)
    context: dict[str, Any] | None = None
    for rule in rules:
        if trigger not in rule.triggers:
            continue
        past = facts.past_offers.get(rule.rule_id, _NONE_BEFORE)
        if rule.issues_only:
            # Conditions are pure: one whose answer changes nothing is not evaluated (most
            # members are far from their birthday, or have this period's offer already).
            windows = [
                may_issue(a.offer, past, now, facts.birth_date) if a.offer else None
                for a in rule.actions
            ]
            if not any(windows):
                continue
        if context is None:
            context = member_context(facts, now)
        # Only the flags change from one rule to the next.
        context["flags"] = sorted(flags)
        actions = rule.actions if rule.condition(context) else rule.otherwise
        for action in actions:
            if action.kind is ActionKind.SET_FLAG and action.flag not in flags:
                flags.add(action.flag)
                planned.append(PlannedAction(rule.rule_id, action.kind, flag=action.flag))
            elif action.kind is ActionKind.CLEAR_FLAG and action.flag in flags:
                flags.discard(action.flag)
                planned.append(PlannedAction(rule.rule_id, action.kind, flag=action.flag))
            elif action.kind is ActionKind.ISSUE_OFFER and action.offer is not None:
                window = may_issue(action.offer, past, now, facts.birth_date)
                if window is not None:
                    planned.append(
                        PlannedAction(
                            rule.rule_id,
                            action.kind,
                            offer=action.offer,
                            start_time=window[0],
                            end_time=window[1],
                            period_key=window[2],
                        )
                    )
    return planned

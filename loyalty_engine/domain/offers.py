"""Personalized offers: what they give, when they are valid, their codes and their messages.

Pure: an offer template (from a rule file) plus a member's facts make an offer; an offer
plus an order amount make a discount or the reason it does not apply.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from loyalty_engine.domain.errors import FailedPrecondition, NotFound
from loyalty_engine.domain.rewards import VOUCHER_ALPHABET

# The member fields a message template may use; nothing else (no attributes, no indexing).
TEMPLATE_FIELDS = frozenset(
    {
        "first_name",
        "tenure_years",
        "code",
        "percent_off",
        "amount_off",
        "bonus_points",
        "sku",
        "valid_until",
        "min_order",
    }
)
CODE_PATTERN_CHAR = "#"
MAX_CODE = 32


class OfferKind(StrEnum):
    """What an offer gives."""

    PERCENT_OFF = "PERCENT_OFF"
    AMOUNT_OFF = "AMOUNT_OFF"
    BONUS_POINTS = "BONUS_POINTS"
    FREE_ITEM = "FREE_ITEM"


class OfferState(StrEnum):
    """The life of an offer; EXPIRED is derived from the end time, never written by a job."""

    ISSUED = "ISSUED"
    REDEEMED = "REDEEMED"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


class OfferRefusal(StrEnum):
    """Why a code does not apply to an order; each is the error reason."""

    NOT_FOUND = "OFFER_CODE_NOT_FOUND"
    NOT_YET_VALID = "OFFER_NOT_YET_VALID"
    EXPIRED = "OFFER_EXPIRED"
    REVOKED = "OFFER_REVOKED"
    USAGE_LIMIT_REACHED = "USAGE_LIMIT_REACHED"
    BELOW_MINIMUM_ORDER = "BELOW_MINIMUM_ORDER"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"


@dataclass(frozen=True)
class Validity:
    """How long an offer is valid: `days` from issue, or a window around the birthday."""

    days: int = 0
    around_birthday: bool = False
    days_before: int = 0
    days_after: int = 0


@dataclass(frozen=True)
class OfferTemplate:
    """The offer a rule issues, as its file describes it."""

    kind: OfferKind
    validity: Validity
    percent_off: int = 0
    amount_off_minor: int = 0
    bonus_points: int = 0
    sku: str = ""
    min_order_minor: int = 0
    shared_code: str = ""
    code_pattern: str = ""
    uses_per_member: int = 1
    total_uses: int = 0  # 0: no limit over all members
    cooldown_days: int = 0
    message: str = ""


@dataclass
class Offer:
    """An offer issued to one member."""

    offer_id: str
    member_id: str
    rule_id: str
    kind: OfferKind
    code: str
    message: str
    start_time: datetime
    end_time: datetime
    period_key: str
    create_time: datetime
    percent_off: int = 0
    amount_off_minor: int = 0
    currency_code: str = ""
    bonus_points: int = 0
    sku: str = ""
    min_order_minor: int = 0
    uses_per_member: int = 1
    total_uses: int = 0
    uses: int = 0
    state: OfferState = OfferState.ISSUED
    redeem_time: datetime | None = None
    revoke_time: datetime | None = None
    events: list[tuple[OfferState, datetime]] = field(default_factory=list)

    def state_at(self, now: datetime) -> OfferState:
        """The state as of `now`: an issued offer past its end time is EXPIRED."""
        if self.state is OfferState.ISSUED and now >= self.end_time:
            return OfferState.EXPIRED
        return self.state

    @property
    def uses_left(self) -> int:
        """Uses left for the member."""
        return max(0, self.uses_per_member - self.uses)


# --- birthdays ---------------------------------------------------------------------------


def birthday_in(year: int, birth_date: date) -> date:
    """The birthday in `year`; 29 February is celebrated on 28 February in other years."""
    if birth_date.month == 2 and birth_date.day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return birth_date.replace(year=year)


def days_to_birthday(birth_date: date, today: date) -> int:
    """Days until the next birthday (0 on the day itself)."""
    upcoming = birthday_in(today.year, birth_date)
    if upcoming < today:
        upcoming = birthday_in(today.year + 1, birth_date)
    return (upcoming - today).days


def days_since_birthday(birth_date: date, today: date) -> int:
    """Days since the last birthday (0 on the day itself)."""
    last = birthday_in(today.year, birth_date)
    if last > today:
        last = birthday_in(today.year - 1, birth_date)
    return (today - last).days


def utc_today(now: datetime) -> date:
    """The UTC calendar day of an aware instant."""
    return now.astimezone(UTC).date()


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def validity_window(
    validity: Validity, now: datetime, birth_date: date | None
) -> tuple[datetime, datetime, str] | None:
    """Start, end (exclusive) and period key of an offer issued now; None if it cannot be.

    A birthday window is anchored on the nearest birthday (the one it is in); its key is that
    birthday, so the offer is issued at most once per birthday whatever the cooldown.
    """
    today = utc_today(now)
    if validity.around_birthday:
        if birth_date is None:
            return None
        since = days_since_birthday(birth_date, today)
        until = days_to_birthday(birth_date, today)
        if since <= validity.days_after:
            anchor = today - timedelta(days=since)
        elif until <= validity.days_before:
            anchor = today + timedelta(days=until)
        else:
            return None
        start = _midnight(anchor - timedelta(days=validity.days_before))
        end = _midnight(anchor + timedelta(days=validity.days_after + 1))
        return start, end, f"birthday-{anchor.isoformat()}"
    return now, now + timedelta(days=validity.days), f"issued-{today.isoformat()}"


# --- codes and messages ------------------------------------------------------------------


def new_offer_code(pattern: str) -> str:
    """A code from a pattern: each `#` becomes a random unambiguous character (31 choices)."""
    return "".join(
        secrets.choice(VOUCHER_ALPHABET) if c == CODE_PATTERN_CHAR else c for c in pattern
    )


def normalize_code(code: str) -> str:
    """Codes compare case-insensitively, without surrounding spaces."""
    return code.strip().upper()


def template_fields(template: str) -> list[str]:
    """The fields a message template names; ValueError if it is not a plain template.

    Only `{name}` with a whitelisted name is allowed: no attribute access, no indexing, no
    conversions or format specs, so a template can never reach into an object.
    """
    names = []
    for _literal, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"unknown field {{{name}}} in message; "
                f"allowed: {', '.join(sorted(TEMPLATE_FIELDS))}"
            )
        if spec or conversion:
            raise ValueError(f"field {{{name}}} may not carry a format spec or conversion")
        names.append(name)
    return names


class _Fields(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def render_message(template: str, values: dict[str, str]) -> str:
    """The personal message: a checked template filled from plain strings only."""
    template_fields(template)
    return template.format_map(_Fields({k: v for k, v in values.items() if k in TEMPLATE_FIELDS}))


# --- applying a code ---------------------------------------------------------------------


@dataclass(frozen=True)
class CodeCheck:
    """Whether an offer applies to an order: the discount, or why not."""

    offer: Offer | None
    refusal: OfferRefusal | None
    discount_minor: int

    @property
    def ok(self) -> bool:
        """True when the code applies."""
        return self.refusal is None

    def raise_if_refused(self, code: str) -> None:
        """Raise the refusal as a domain error (NOT_FOUND or FAILED_PRECONDITION)."""
        if self.refusal is None:
            return
        if self.refusal is OfferRefusal.NOT_FOUND:
            raise NotFound(self.refusal.value, f"offer code {code!r} not found for this member")
        messages = {
            OfferRefusal.NOT_YET_VALID: "the offer is not valid yet",
            OfferRefusal.EXPIRED: "the offer has expired",
            OfferRefusal.REVOKED: "the offer was revoked",
            OfferRefusal.USAGE_LIMIT_REACHED: "the offer's usage limit is reached",
            OfferRefusal.BELOW_MINIMUM_ORDER: "the order is below the offer's minimum",
            OfferRefusal.CURRENCY_MISMATCH: "the order is in another currency than the program",
        }
        metadata = {"code": code}
        if self.offer is not None and self.refusal is OfferRefusal.BELOW_MINIMUM_ORDER:
            metadata["min_order_minor"] = str(self.offer.min_order_minor)
        raise FailedPrecondition(self.refusal.value, messages[self.refusal], metadata)


def discount_for(offer: Offer, order_total_minor: int) -> int:
    """The discount an offer gives on an order (0 for bonus points and free items)."""
    if offer.kind is OfferKind.PERCENT_OFF:
        return order_total_minor * offer.percent_off // 100
    if offer.kind is OfferKind.AMOUNT_OFF:
        return min(offer.amount_off_minor, order_total_minor)
    return 0


def check_code(
    offer: Offer | None,
    order_total_minor: int,
    order_currency: str,
    now: datetime,
    total_uses_left: int | None,
) -> CodeCheck:
    """Whether `offer` applies to an order now; `total_uses_left` None means unlimited."""
    if offer is None:
        return CodeCheck(None, OfferRefusal.NOT_FOUND, 0)
    state = offer.state_at(now)
    refusal: OfferRefusal | None = None
    if state is OfferState.REVOKED:
        refusal = OfferRefusal.REVOKED
    elif state is OfferState.EXPIRED:
        refusal = OfferRefusal.EXPIRED
    elif now < offer.start_time:
        refusal = OfferRefusal.NOT_YET_VALID
    elif offer.uses_left <= 0 or (total_uses_left is not None and total_uses_left <= 0):
        refusal = OfferRefusal.USAGE_LIMIT_REACHED
    elif offer.currency_code and order_currency != offer.currency_code:
        refusal = OfferRefusal.CURRENCY_MISMATCH
    elif order_total_minor < offer.min_order_minor:
        refusal = OfferRefusal.BELOW_MINIMUM_ORDER
    if refusal is not None:
        return CodeCheck(offer, refusal, 0)
    return CodeCheck(offer, None, discount_for(offer, order_total_minor))

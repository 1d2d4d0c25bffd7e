"""The database schema, as SQLAlchemy Core tables.

Sharding-ready (Citus): every member-owned table carries ``program_id`` and
``member_id`` and has both in its primary key, so it can be distributed by
member and co-located. Keys that must be unique across a program but do not
belong to one member (order ids, external ids, emails) live in small claim
tables keyed by ``program_id`` and the value, which can be distributed by that
value. Programs, tiers, earning rules and rewards are small tables that can be
replicated as reference tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        # SQLite stores text; a naive UTC value keeps text order equal to time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Id = sa.String(64)
Ts = UtcDateTime
Points = sa.BigInteger

programs = sa.Table(
    "programs",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("currency_code", sa.String(3), nullable=False),
    sa.Column("base_points", sa.BigInteger, nullable=False),
    sa.Column("per_amount_minor", sa.BigInteger, nullable=False),
    sa.Column("rounding", sa.String(16), nullable=False),
    sa.Column("min_order_minor", sa.BigInteger, nullable=False),
    sa.Column("excluded_categories", sa.JSON, nullable=False),
    sa.Column("tier_metric", sa.String(16), nullable=False),
    sa.Column("tier_window_months", sa.Integer, nullable=False),
    sa.Column("tier_grace_days", sa.Integer, nullable=False),
    sa.Column("tier_downgrade_mode", sa.String(16), nullable=False),
    sa.Column("expiry_mode", sa.String(24), nullable=False),
    sa.Column("expiry_months", sa.Integer, nullable=False),
    sa.Column("pending_days", sa.Integer, nullable=False),
    sa.Column("negative_balance_policy", sa.String(24), nullable=False),
    sa.Column("late_purchase_window_days", sa.Integer, nullable=False),
    sa.Column("point_value_minor_per_100_points", sa.BigInteger, nullable=False),
    sa.Column("redemption_hold_seconds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("redemption_cancel_window_days", sa.Integer, nullable=False, server_default="0"),
    sa.Column("min_points_per_redemption", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("max_redemption_share_percent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("update_time", Ts, nullable=False),
)

tiers = sa.Table(
    "tiers",
    metadata,
    sa.Column("program_id", Id, sa.ForeignKey("programs.program_id"), primary_key=True),
    sa.Column("tier_id", Id, primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("threshold", sa.BigInteger, nullable=False),
    sa.Column("multiplier_percent", sa.Integer, nullable=False),
    sa.Column("perks", sa.Text, nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("update_time", Ts, nullable=False),
)

earning_rules = sa.Table(
    "earning_rules",
    metadata,
    sa.Column("program_id", Id, sa.ForeignKey("programs.program_id"), primary_key=True),
    sa.Column("rule_id", Id, primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("match", sa.String(200), nullable=False),
    sa.Column("multiplier_percent", sa.Integer, nullable=False),
    sa.Column("bonus_points_per_unit", sa.BigInteger, nullable=False),
    sa.Column("bonus_points", sa.BigInteger, nullable=False),
    sa.Column("start_time", Ts, nullable=True),
    sa.Column("end_time", Ts, nullable=True),
    sa.Column("categories", sa.JSON, nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("update_time", Ts, nullable=False),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("program_id", Id, sa.ForeignKey("programs.program_id"), primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("given_name", sa.String(200), nullable=True),
    sa.Column("family_name", sa.String(200), nullable=True),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("phone", sa.String(32), nullable=True),
    sa.Column("card_number", sa.String(64), nullable=True),
    sa.Column("birth_date", sa.Date, nullable=True),
    sa.Column("join_time", Ts, nullable=False),
    sa.Column("marketing_consent", sa.Boolean, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("update_time", Ts, nullable=False),
    sa.Column("erase_time", Ts, nullable=True),
)

# One row per (kind, value) a member is known by; the primary key makes each unique in
# the program and makes lookups one index probe.
member_identifiers = sa.Table(
    "member_identifiers",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", sa.String(320), primary_key=True),
    sa.Column("member_id", Id, nullable=False),
)

# The member's running totals and tier: the row that is locked while a member's ledger moves.
member_accounts = sa.Table(
    "member_accounts",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("available", Points, nullable=False),
    sa.Column("pending", Points, nullable=False),
    sa.Column("reserved", Points, nullable=False),
    sa.Column("lifetime_earned", Points, nullable=False),
    sa.Column("redeemed", Points, nullable=False),
    sa.Column("expired", Points, nullable=False),
    sa.Column("reversed", Points, nullable=False),
    sa.Column("last_activity_time", Ts, nullable=True),
    sa.Column("entry_seq", sa.BigInteger, nullable=False),
    sa.Column("tier_id", Id, nullable=True),
    sa.Column("tier_review_time", Ts, nullable=True),
    sa.Column("tier_change_seq", sa.BigInteger, nullable=False),
    # Buying statistics, kept current in the same transaction as each purchase and return.
    sa.Column("first_purchase_time", Ts, nullable=True),
    sa.Column("last_purchase_time", Ts, nullable=True),
    sa.Column("order_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_spend_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(
        ["program_id", "member_id"], ["members.program_id", "members.member_id"]
    ),
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("entry_seq", sa.BigInteger, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("points", Points, nullable=False),
    sa.Column("pending_delta", Points, nullable=False),
    sa.Column("balance_after", Points, nullable=False),
    sa.Column("pending_after", Points, nullable=False),
    sa.Column("occur_time", Ts, nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("order_id", sa.String(200), nullable=True),
    sa.Column("lot_id", Id, nullable=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("shortfall", Points, nullable=False),
)

points_lots = sa.Table(
    "points_lots",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("lot_id", Id, primary_key=True),
    sa.Column("order_id", sa.String(200), nullable=True),
    sa.Column("earned_time", Ts, nullable=False),
    sa.Column("available_time", Ts, nullable=False),
    sa.Column("expires_time", Ts, nullable=True),
    sa.Column("points", Points, nullable=False),
    sa.Column("remaining", Points, nullable=False),
    sa.Column("pending", sa.Boolean, nullable=False),
    sa.CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
)
sa.Index(
    "ix_points_lots_open",
    points_lots.c.program_id,
    points_lots.c.member_id,
    points_lots.c.remaining,
)

# Program-wide claim on an order id: a second purchase with the same order id fails here.
order_claims = sa.Table(
    "order_claims",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("order_id", sa.String(200), primary_key=True),
    sa.Column("member_id", Id, nullable=False),
)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("order_id", sa.String(200), primary_key=True),
    sa.Column("purchase_time", Ts, nullable=False),
    sa.Column("store_id", sa.String(200), nullable=False),
    sa.Column("currency_code", sa.String(3), nullable=False),
    sa.Column("total_minor", sa.BigInteger, nullable=False),
    sa.Column("eligible_minor", sa.BigInteger, nullable=False),
    sa.Column("points_awarded", Points, nullable=False),
    sa.Column("order_level_points", Points, nullable=False),
    sa.Column("breakdown", sa.JSON, nullable=False),
    sa.Column("returned_minor", sa.BigInteger, nullable=False),
    sa.Column("points_reversed", Points, nullable=False),
    sa.Column("tier_id", Id, nullable=True),
    sa.Column("create_time", Ts, nullable=False),
)
# On PostgreSQL it also carries the amounts: a segment refresh sums each member's last 12
# months from this index alone, in member order, with no sort and no hash table.
sa.Index(
    "ix_purchases_member_time",
    purchases.c.program_id,
    purchases.c.member_id,
    purchases.c.purchase_time,
    postgresql_include=["total_minor", "returned_minor", "points_awarded", "points_reversed"],
)
# Purchases arrive roughly in time order, so a BRIN index (a few pages for millions of rows,
# next to nothing to maintain) finds a time range. The segment refresh read its last 12
# months through it until migration 0008; it now sums from the by-member index above, and
# no query of the engine's is written to use this one.
sa.Index("ix_purchases_time_brin", purchases.c.purchase_time, postgresql_using="brin").ddl_if(
    dialect="postgresql"
)

purchase_lines = sa.Table(
    "purchase_lines",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("order_id", sa.String(200), primary_key=True),
    sa.Column("line_index", sa.Integer, primary_key=True),
    sa.Column("sku", sa.String(200), nullable=False),
    sa.Column("category", sa.String(200), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("unit_price_minor", sa.BigInteger, nullable=False),
    sa.Column("points", Points, nullable=False),
    sa.Column("returned_quantity", sa.BigInteger, nullable=False),
)

returns = sa.Table(
    "returns",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("return_id", sa.String(200), primary_key=True),
    sa.Column("order_id", sa.String(200), nullable=False),
    sa.Column("return_time", Ts, nullable=False),
    sa.Column("refund_minor", sa.BigInteger, nullable=False),
    sa.Column("points_reversed", Points, nullable=False),
    sa.Column("shortfall", Points, nullable=False),
    sa.Column("create_time", Ts, nullable=False),
)

tier_changes = sa.Table(
    "tier_changes",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("change_seq", sa.BigInteger, primary_key=True),
    sa.Column("tier_before", Id, nullable=True),
    sa.Column("tier_after", Id, nullable=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("change_time", Ts, nullable=False),
)

# Exactly-once: the first response to a request id, stored in the same transaction as its effects.
# Program-level requests use member_id "" so the key stays (program, member, request).
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("method", sa.String(100), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("response", sa.LargeBinary, nullable=True),
    sa.Column("create_time", Ts, nullable=False),
)

rewards = sa.Table(
    "rewards",
    metadata,
    sa.Column("program_id", Id, sa.ForeignKey("programs.program_id"), primary_key=True),
    sa.Column("reward_id", Id, primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("points_cost", Points, nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("discount_minor", sa.BigInteger, nullable=False),
    sa.Column("discount_currency", sa.String(3), nullable=False),
    sa.Column("discount_percent", sa.Integer, nullable=False),
    sa.Column("sku", sa.String(200), nullable=False),
    sa.Column("min_tier_id", Id, nullable=True),
    sa.Column("start_time", Ts, nullable=True),
    sa.Column("end_time", Ts, nullable=True),
    sa.Column("limit_per_member", sa.Integer, nullable=False),
    # Units left after confirmed redemptions; NULL for unlimited. Holds are not subtracted
    # here but counted from `redemptions`, so an expired hold needs no job to give its unit back.
    sa.Column("stock", sa.BigInteger, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("update_time", Ts, nullable=False),
    sa.CheckConstraint("stock IS NULL OR stock >= 0", name="stock_not_negative"),
)

redemptions = sa.Table(
    "redemptions",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("redemption_id", Id, primary_key=True),
    sa.Column("reward_id", Id, nullable=True),
    sa.Column("points", Points, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("expire_time", Ts, nullable=True),
    sa.Column("voucher_code", sa.String(32), nullable=False),
    sa.Column("order_id", sa.String(200), nullable=False),
    sa.Column("discount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency_code", sa.String(3), nullable=False),
)
sa.Index(
    "ix_redemptions_reward_state",
    redemptions.c.program_id,
    redemptions.c.reward_id,
    redemptions.c.state,
    redemptions.c.expire_time,
)
sa.Index(
    "ix_redemptions_member_reward",
    redemptions.c.program_id,
    redemptions.c.member_id,
    redemptions.c.reward_id,
    redemptions.c.state,
)

redemption_events = sa.Table(
    "redemption_events",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("redemption_id", Id, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("event_time", Ts, nullable=False),
)

# Voucher codes are unique in a program; the claim makes a collision a retry, not a clash.
voucher_codes = sa.Table(
    "voucher_codes",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("member_id", Id, nullable=False),
    sa.Column("redemption_id", Id, nullable=False),
)

# API keys: the secret is stored only as a hash; the operator's keys have program_id "".
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("expire_time", Ts, nullable=True),
    sa.Column("revoke_time", Ts, nullable=True),
)
sa.Index("ix_api_keys_key_id", api_keys.c.key_id, unique=True)

member_categories = sa.Table(
    "member_categories",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("category", sa.String(200), primary_key=True),
)

# RFM scores and windowed statistics, computed for a whole program in one set-based pass.
member_scores = sa.Table(
    "member_scores",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("recency", sa.SmallInteger, nullable=False),
    sa.Column("frequency", sa.SmallInteger, nullable=False),
    sa.Column("monetary", sa.SmallInteger, nullable=False),
    sa.Column("segment_id", sa.String(32), nullable=False),
    sa.Column("spend_90d", sa.BigInteger, nullable=False),
    sa.Column("orders_90d", sa.BigInteger, nullable=False),
    sa.Column("points_90d", sa.BigInteger, nullable=False),
    sa.Column("spend_12m", sa.BigInteger, nullable=False),
    sa.Column("orders_12m", sa.BigInteger, nullable=False),
    sa.Column("points_12m", sa.BigInteger, nullable=False),
    sa.Column("spend_all", sa.BigInteger, nullable=False),
    sa.Column("orders_all", sa.BigInteger, nullable=False),
    sa.Column("points_all", sa.BigInteger, nullable=False),
    sa.Column("compute_time", Ts, nullable=False),
    # Average order value (net spend / orders, rounded down) per window, 0 without orders.
    sa.Column("aov_90d", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("aov_12m", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("aov_all", sa.BigInteger, nullable=False, server_default="0"),
)
# A segment's members in id order with their scores, so that an export page reads this
# index alone (an index-only scan on PostgreSQL) rather than a row per member, scattered
# over the whole table. The scores follow the unique member id, so they never reorder it.
sa.Index(
    "ix_member_scores_segment",
    member_scores.c.program_id,
    member_scores.c.segment_id,
    member_scores.c.member_id,
    member_scores.c.recency,
    member_scores.c.frequency,
    member_scores.c.monetary,
)
# One index per ranking ListTopCustomers offers, holding only the members who rank (> 0):
# the top N is then a walk down an index, whatever the metric and window.
RANKED_SCORE_COLUMNS = tuple(
    f"{metric}_{window}"
    for metric in ("spend", "orders", "points", "aov")
    for window in ("90d", "12m", "all")
)
# Members rank when their value is above this. Written into the SQL as a literal, so that
# the planner can prove the partial ranking indexes (`WHERE column > 0`) apply, also to a
# prepared statement's generic plan.
RANKS: sa.ColumnClause[Any] = sa.literal_column("0")

for _column in RANKED_SCORE_COLUMNS:
    sa.Index(
        f"ix_member_scores_{_column}",
        member_scores.c.program_id,
        member_scores.c[_column],
        postgresql_where=member_scores.c[_column] > RANKS,
        sqlite_where=member_scores.c[_column] > RANKS,
    )

segment_refreshes = sa.Table(
    "segment_refreshes",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("compute_time", Ts, nullable=False),
    sa.Column("members_scored", sa.BigInteger, nullable=False),
)

# --- rules and offers (issue 6) -----------------------------------------------------------

# Flags rules set on members (top_customer); the rule that set each one, and when.
member_flags = sa.Table(
    "member_flags",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("flag", sa.String(64), primary_key=True),
    sa.Column("rule_id", Id, nullable=False),
    sa.Column("set_time", Ts, nullable=False),
)

# Offers issued by rules. `period_key` (the birthday, or the issue day) is unique per member
# and rule, so two rule runs racing for one member can never issue the same offer twice.
offers = sa.Table(
    "offers",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("offer_id", Id, primary_key=True),
    sa.Column("rule_id", Id, nullable=False),
    sa.Column("period_key", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("message", sa.String(2000), nullable=False),
    sa.Column("percent_off", sa.Integer, nullable=False),
    sa.Column("amount_off_minor", sa.BigInteger, nullable=False),
    sa.Column("currency_code", sa.String(3), nullable=False),
    sa.Column("bonus_points", Points, nullable=False),
    sa.Column("sku", sa.String(200), nullable=False),
    sa.Column("min_order_minor", sa.BigInteger, nullable=False),
    sa.Column("uses_per_member", sa.Integer, nullable=False),
    sa.Column("total_uses", sa.BigInteger, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("start_time", Ts, nullable=False),
    sa.Column("end_time", Ts, nullable=False),
    sa.Column("create_time", Ts, nullable=False),
    sa.Column("redeem_time", Ts, nullable=True),
    sa.Column("revoke_time", Ts, nullable=True),
    sa.CheckConstraint("uses >= 0 AND uses <= uses_per_member", name="uses_within_limit"),
)
sa.Index(
    "ix_offers_rule_period",
    offers.c.program_id,
    offers.c.member_id,
    offers.c.rule_id,
    offers.c.period_key,
    unique=True,
)
sa.Index("ix_offers_member_code", offers.c.program_id, offers.c.member_id, offers.c.code)
sa.Index("ix_offers_offer_id", offers.c.program_id, offers.c.offer_id)

offer_events = sa.Table(
    "offer_events",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("member_id", Id, primary_key=True),
    sa.Column("offer_id", Id, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("event_time", Ts, nullable=False),
    sa.Column("order_id", sa.String(200), nullable=False),
    sa.Column("discount_minor", sa.BigInteger, nullable=False),
)

# Unique per-member codes are unique in a program; the claim turns a collision into a retry.
offer_codes = sa.Table(
    "offer_codes",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("member_id", Id, nullable=False),
    sa.Column("offer_id", Id, nullable=False),
)

# Uses of a rule's offers over all members, for rules with a total usage limit.
offer_rule_usage = sa.Table(
    "offer_rule_usage",
    metadata,
    sa.Column("program_id", Id, primary_key=True),
    sa.Column("rule_id", Id, primary_key=True),
    sa.Column("uses", sa.BigInteger, nullable=False),
)

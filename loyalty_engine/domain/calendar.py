"""Calendar arithmetic for windows and expiry dates, on timezone-aware datetimes."""

from __future__ import annotations

import calendar as _stdlib_calendar
from datetime import datetime, timedelta

from loyalty_engine.domain.errors import InvalidArgument


def add_months(dt: datetime, months: int) -> datetime:
    """Shift ``dt`` by whole calendar months, clamping the day (Jan 31 + 1 month = Feb 28/29)."""
    month_index = dt.month - 1 + months
    year, month0 = divmod(month_index, 12)
    year += dt.year
    last_day = _stdlib_calendar.monthrange(year, month0 + 1)[1]
    return dt.replace(year=year, month=month0 + 1, day=min(dt.day, last_day))


def add_days(dt: datetime, days: int) -> datetime:
    """Shift ``dt`` by whole days of 24 hours (UTC has no daylight-saving jumps)."""
    return dt + timedelta(days=days)


def require_aware(dt: datetime, field: str) -> datetime:
    """Return ``dt`` if it carries a timezone, else raise InvalidArgument on ``field``."""
    # A naive datetime would compare with TypeError against stored aware ones, or worse,
    # be read in the server's local zone.
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidArgument.for_field(field, "must be a timezone-aware (UTC) time")
    return dt

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


def latest_start(end: datetime, months: int) -> datetime:
    """The latest ``dt`` with ``add_months(dt, months) <= end`` (``months`` >= 0).

    Not simply ``add_months(end, -months)``: month-end clamping maps several days onto one
    (Aug 29-31 + 6 months are all Feb 28), so at month ends the answer is later.
    """
    start = add_months(end, -months)
    days_then = _stdlib_calendar.monthrange(start.year, start.month)[1]
    if end.day > days_then:
        # Every instant of that (shorter) month lands on an earlier day of end's month.
        return start.replace(day=days_then, hour=23, minute=59, second=59, microsecond=999_999)
    if end.day == _stdlib_calendar.monthrange(end.year, end.month)[1]:
        # The later days of that month are clamped onto end's day.
        return start.replace(day=days_then)
    return start


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

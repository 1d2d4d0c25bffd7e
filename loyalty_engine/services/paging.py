"""Paging limits shared by every List method."""

from __future__ import annotations

from loyalty_engine.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int, field: str = "page_size") -> int:
    """The page size to use: the default for 0, capped at the maximum, never negative."""
    if requested < 0:
        raise InvalidArgument.for_field(field, "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)

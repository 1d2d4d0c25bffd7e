"""CSV in and out for the CLI: purchase history files and segment exports.

A purchase file has a header row with at least member_external_id, order_id,
purchase_time (ISO 8601 with a zone, such as 2024-03-01T10:15:00Z), total_minor and
currency_code; store_id and lines (a JSON list of {"sku", "category", "quantity",
"unit_price_minor"}) are optional.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

from loyalty_engine.domain.earning import LineItem
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.services.imports import ImportRow

REQUIRED = ("member_external_id", "order_id", "purchase_time", "total_minor", "currency_code")


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("purchase_time needs a time zone (such as Z)")
    return value.astimezone(UTC)


def _lines(text: str) -> tuple[LineItem, ...]:
    if not text.strip():
        return ()
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("lines must be a JSON list")
    return tuple(
        LineItem(
            sku=str(i.get("sku", "")),
            category=str(i["category"]),
            quantity=int(i["quantity"]),
            unit_price_minor=int(i["unit_price_minor"]),
        )
        for i in items
    )


def read_purchases(
    handle: TextIO, award_points: bool
) -> Iterator[ImportRow | tuple[int, str, str]]:
    """Rows of a purchase file, or (line, reason, message) for a row that cannot be read."""
    reader = csv.reader(handle)
    header = [name.strip() for name in next(reader, [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InvalidArgument.for_field("file", f"the header lacks {', '.join(missing)}")
    ext, order, when, total, currency = (header.index(c) for c in REQUIRED)
    store = header.index("store_id") if "store_id" in header else None
    lines = header.index("lines") if "lines" in header else None
    width = len(header)
    for row in reader:
        line = reader.line_num
        if len(row) != width:
            if not any(field.strip() for field in row):
                continue  # a blank line
            yield (line, "INVALID_ROW", f"expected {width} fields, found {len(row)}")
            continue
        try:
            yield ImportRow(
                line,
                row[ext].strip(),
                row[order].strip(),
                _time(row[when]),
                int(row[total]),
                row[currency].strip(),
                row[store].strip() if store is not None else "",
                _lines(row[lines]) if lines is not None and row[lines] else (),
                award_points,
            )
        except (ValueError, KeyError, TypeError) as exc:
            yield (line, "INVALID_ROW", str(exc)[:200])

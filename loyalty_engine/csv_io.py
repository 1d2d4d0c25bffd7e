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
from loyalty_engine.services.points import RecordPurchase

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
    handle: TextIO, program_id: str, award_points: bool
) -> Iterator[ImportRow | tuple[int, str, str]]:
    """Rows of a purchase file, or (line, reason, message) for a row that cannot be read."""
    reader = csv.DictReader(handle)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise InvalidArgument.for_field("file", f"the header lacks {', '.join(missing)}")
    for row in reader:
        line = reader.line_num
        try:
            yield ImportRow(
                row=line,
                member_external_id=(row["member_external_id"] or "").strip(),
                award_points=award_points,
                purchase=RecordPurchase(
                    program_id=program_id,
                    member_id="",
                    order_id=(row["order_id"] or "").strip(),
                    purchase_time=_time(row["purchase_time"] or ""),
                    store_id=(row.get("store_id") or "").strip(),
                    currency_code=(row["currency_code"] or "").strip(),
                    total_minor=int(row["total_minor"]),
                    lines=_lines(row.get("lines") or ""),
                ),
            )
        except (ValueError, KeyError, TypeError) as exc:
            yield (line, "INVALID_ROW", str(exc)[:200])

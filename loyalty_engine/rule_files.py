"""Rule files: YAML, one rule per file, conditions in CEL, checked as a whole at load.

A rule set is all-or-nothing: any bad file refuses the whole set with the file, the line
and the reason, and the rules in force stay in force. CEL is compiled once here and
checked against the documented member context by evaluating it on sample members (the
CEL package has no static type checker): an unknown variable or field, an operator on
the wrong types, or a result that is not a bool are refused at load, not at run time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import cel
import yaml

from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.offers import (
    CODE_PATTERN_CHAR,
    MAX_CODE,
    OfferKind,
    OfferTemplate,
    Validity,
    template_fields,
)
from loyalty_engine.domain.rules import (
    Action,
    ActionKind,
    MemberFacts,
    Rule,
    Trigger,
    member_context,
)

log = logging.getLogger(__name__)

_RULE_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_FLAG = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,31}$")
_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+)")
RULE_FIELDS = {"id", "description", "triggers", "when", "actions", "otherwise"}
OFFER_FIELDS = {
    "kind",
    "percent_off",
    "amount_off_minor",
    "bonus_points",
    "sku",
    "min_order_minor",
    "code",
    "code_pattern",
    "valid_days",
    "valid_around_birthday",
    "uses_per_member",
    "total_uses",
    "cooldown_days",
    "message",
}
_KINDS = {
    "percent_off": OfferKind.PERCENT_OFF,
    "amount_off": OfferKind.AMOUNT_OFF,
    "bonus_points": OfferKind.BONUS_POINTS,
    "free_item": OfferKind.FREE_ITEM,
}
# Sample members the conditions are checked on: one with every fact, one with none.
_SAMPLES = (
    MemberFacts(
        member_id="sample",
        first_name="Ada",
        birth_date=date(1990, 2, 28),
        has_email=True,
        tier="gold",
        tenure_years=4,
        orders=12,
        spend_minor=120_000,
        spend_12m_minor=40_000,
        orders_12m=4,
        last_purchase_time=datetime(2026, 1, 1, tzinfo=UTC),
        recency=3,
        frequency=4,
        monetary=5,
        segment="loyal",
        top_rank=3,
        top_members=100,
        flags={"top_customer"},
    ),
    MemberFacts(member_id="empty"),
)
_SAMPLE_NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Problem:
    """One reason a rule file is refused."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class RuleSetError(InvalidArgument):
    """A rule set refused as a whole (INVALID_ARGUMENT, reason INVALID_RULE_SET)."""

    problems: list[Problem]

    @classmethod
    def of(cls, problems: list[Problem]) -> RuleSetError:
        """The error naming every problem."""
        first = problems[0]
        error = cls(
            reason="INVALID_RULE_SET",
            message="rule set refused: " + "; ".join(str(p) for p in problems),
            metadata={"file": first.file, "line": str(first.line)},
        )
        error.problems = list(problems)
        return error


class _Refused(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    lines: dict[str, int]


def _scalar(node: yaml.ScalarNode) -> Any:
    return yaml.SafeLoader("").construct_object(node)  # type: ignore[no-untyped-call]


def _plain(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        result = _Map()
        result.line = node.start_mark.line + 1
        result.lines = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in result:
                raise _Refused(key_node.start_mark.line + 1, f"duplicate field {key!r}")
            result[key] = _plain(value_node)
            result.lines[key] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item) for item in node.value]
    assert isinstance(node, yaml.ScalarNode)
    return _scalar(node)


def _check_fields(mapping: _Map, allowed: set[str], what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise _Refused(
                mapping.lines[key],
                f"unknown field {key!r} in {what}; allowed: {', '.join(sorted(allowed))}",
            )


def _int(mapping: _Map, key: str, low: int, high: int, default: int) -> int:
    value = mapping.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise _Refused(mapping.lines.get(key, mapping.line), f"{key} must be {low}-{high}")
    return value


def _str(mapping: _Map, key: str, default: str = "") -> str:
    value = mapping.get(key, default)
    if not isinstance(value, str):
        raise _Refused(mapping.lines.get(key, mapping.line), f"{key} must be a string")
    return value


class _CelCondition:
    """A compiled CEL condition; a failing evaluation counts as false (and is logged)."""

    def __init__(self, program: Any, rule_id: str) -> None:
        self.program = program
        self.rule_id = rule_id
        # The context's top-level names the condition reads, so callers load only those.
        self.variables = frozenset(str(v).split(".", 1)[0] for v in program.variables())

    def __call__(self, context: Mapping[str, Any]) -> bool:
        # Only the names the condition reads: converting the context into CEL values is
        # most of an evaluation's cost, and it grows with what is passed, not what is read.
        names = {k: context[k] for k in self.variables if k in context}
        try:
            return self.program.execute(names) is True
        except Exception:
            log.exception("rule %s: condition failed; treated as false", self.rule_id)
            return False


def compile_condition(source: str, line: int, rule_id: str) -> _CelCondition:
    """Compile and type-check a CEL condition against the member context."""
    try:
        program = cel.compile(source)
    except Exception as exc:
        text = str(exc)
        where = _CEL_POSITION.search(text)
        offset = int(where.group(1)) - 1 if where else 0
        reason = text.split("ERROR: ", 1)[-1].split("\n", 1)[0]
        raise _Refused(line + offset, f"CEL syntax error in `when`: {reason}") from None
    known = set(member_context(_SAMPLES[0], _SAMPLE_NOW))
    unknown = sorted(set(program.variables()) - known)
    if unknown:
        raise _Refused(
            line,
            f"unknown variable {unknown[0]!r} in `when`; "
            f"the context has {', '.join(sorted(known))}",
        )
    for sample in _SAMPLES:
        try:
            result = program.execute(member_context(sample, _SAMPLE_NOW))
        except KeyError as exc:
            raise _Refused(line, f"CEL error in `when`: no such field {exc}") from None
        except Exception as exc:
            reason = str(exc).split(". ", 1)[0]
            raise _Refused(line, f"CEL type error in `when`: {reason}") from None
        if not isinstance(result, bool):
            raise _Refused(line, f"`when` must be a bool, not {type(result).__name__}")
    return _CelCondition(program, rule_id)


def _offer(spec: Any, line: int) -> OfferTemplate:
    if not isinstance(spec, _Map):
        raise _Refused(line, "issue_offer must be a mapping")
    _check_fields(spec, OFFER_FIELDS, "issue_offer")
    kind_name = _str(spec, "kind")
    if kind_name not in _KINDS:
        raise _Refused(
            spec.lines.get("kind", spec.line), f"kind must be one of {', '.join(_KINDS)}"
        )
    kind = _KINDS[kind_name]
    percent = _int(spec, "percent_off", 0, 100, 0)
    amount = _int(spec, "amount_off_minor", 0, 10**12, 0)
    bonus = _int(spec, "bonus_points", 0, 10**9, 0)
    sku = _str(spec, "sku")
    required = {
        OfferKind.PERCENT_OFF: ("percent_off", percent),
        OfferKind.AMOUNT_OFF: ("amount_off_minor", amount),
        OfferKind.BONUS_POINTS: ("bonus_points", bonus),
        OfferKind.FREE_ITEM: ("sku", sku),
    }[kind]
    if not required[1]:
        raise _Refused(spec.line, f"a {kind_name} offer needs {required[0]}")
    code = _str(spec, "code").strip().upper()
    pattern = _str(spec, "code_pattern").strip().upper()
    if bool(code) == bool(pattern):
        raise _Refused(spec.line, "set exactly one of code (shared) and code_pattern (unique)")
    if code and not _CODE.match(code):
        raise _Refused(spec.lines["code"], "code must be 2-32 of A-Z, 0-9 and '-'")
    if pattern and (
        not _CODE.match(pattern.replace(CODE_PATTERN_CHAR, "X"))
        or pattern.count(CODE_PATTERN_CHAR) < 8
        or len(pattern) > MAX_CODE
    ):
        raise _Refused(
            spec.lines["code_pattern"],
            f"code_pattern must be at most {MAX_CODE} of A-Z, 0-9, '-' and at least 8 '#'",
        )
    if ("valid_days" in spec) == ("valid_around_birthday" in spec):
        raise _Refused(spec.line, "set exactly one of valid_days and valid_around_birthday")
    if "valid_days" in spec:
        validity = Validity(days=_int(spec, "valid_days", 1, 3660, 0))
    else:
        window = spec["valid_around_birthday"]
        if not isinstance(window, _Map):
            raise _Refused(spec.lines["valid_around_birthday"], "must be a mapping")
        _check_fields(window, {"days_before", "days_after"}, "valid_around_birthday")
        validity = Validity(
            around_birthday=True,
            days_before=_int(window, "days_before", 0, 180, 0),
            days_after=_int(window, "days_after", 0, 180, 0),
        )
    message = _str(spec, "message")
    try:
        template_fields(message)
    except ValueError as exc:
        raise _Refused(spec.lines.get("message", spec.line), str(exc)) from None
    return OfferTemplate(
        kind=kind,
        validity=validity,
        percent_off=percent,
        amount_off_minor=amount,
        bonus_points=bonus,
        sku=sku,
        min_order_minor=_int(spec, "min_order_minor", 0, 10**12, 0),
        shared_code=code,
        code_pattern=pattern,
        uses_per_member=_int(spec, "uses_per_member", 1, 1000, 1),
        total_uses=_int(spec, "total_uses", 0, 10**9, 0),
        cooldown_days=_int(spec, "cooldown_days", 0, 3660, 0),
        message=message,
    )


def _actions(items: Any, line: int, what: str) -> tuple[Action, ...]:
    if not isinstance(items, list):
        raise _Refused(line, f"{what} must be a list")
    actions = []
    for item in items:
        if not isinstance(item, _Map) or len(item) != 1:
            raise _Refused(
                getattr(item, "line", line),
                "each action is one of set_flag, clear_flag, issue_offer",
            )
        (key, value), item_line = next(iter(item.items())), next(iter(item.lines.values()))
        if key in ("set_flag", "clear_flag"):
            if not isinstance(value, str) or not _FLAG.match(value):
                raise _Refused(item_line, f"{key} needs a flag name of a-z, 0-9 and '_'")
            kind = ActionKind.SET_FLAG if key == "set_flag" else ActionKind.CLEAR_FLAG
            actions.append(Action(kind, flag=value))
        elif key == "issue_offer":
            actions.append(Action(ActionKind.ISSUE_OFFER, offer=_offer(value, item_line)))
        else:
            raise _Refused(
                item_line, f"unknown action {key!r}; use set_flag, clear_flag or issue_offer"
            )
    return tuple(actions)


def parse_rule(text: str, source: str) -> Rule:
    """One rule file's text as a Rule; RuleSetError naming the file and line if it is bad."""
    try:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise _Refused(
                mark.line + 1 if mark else 1, f"YAML syntax error: {exc.problem or exc}"
            ) from None
        except yaml.YAMLError as exc:
            raise _Refused(1, f"YAML error: {exc}") from None
        spec = _plain(node) if node is not None else None
        if not isinstance(spec, _Map):
            raise _Refused(1, "a rule file is a mapping with id, when and actions")
        _check_fields(spec, RULE_FIELDS, "a rule")
        for key in ("id", "when", "actions"):
            if key not in spec:
                raise _Refused(spec.line, f"missing field {key!r}")
        rule_id = spec["id"]
        if not isinstance(rule_id, str) or not _RULE_ID.match(rule_id):
            raise _Refused(spec.lines["id"], "id must be 1-63 of a-z, 0-9 and '-'")
        triggers = frozenset(Trigger)
        if "triggers" in spec:
            names = spec["triggers"]
            valid = {t.value for t in Trigger}
            if not isinstance(names, list) or not names or not set(names) <= valid:
                raise _Refused(
                    spec.lines["triggers"], f"triggers must be a list of {', '.join(sorted(valid))}"
                )
            triggers = frozenset(Trigger(n) for n in names)
        when = spec["when"]
        if not isinstance(when, str) or not when.strip():
            raise _Refused(spec.lines["when"], "when must be a CEL expression")
        block = 1 if text.splitlines()[spec.lines["when"] - 1].rstrip().endswith(("|", ">")) else 0
        condition = compile_condition(when, spec.lines["when"] + block, rule_id)
        actions = _actions(spec["actions"], spec.lines["actions"], "actions")
        if not actions:
            raise _Refused(spec.lines["actions"], "actions must not be empty")
        otherwise = _actions(spec.get("otherwise", []), spec.lines.get("otherwise", 1), "otherwise")
        if any(a.kind is ActionKind.ISSUE_OFFER for a in otherwise):
            raise _Refused(spec.lines["otherwise"], "otherwise may only set or clear flags")
        return Rule(
            rule_id=rule_id,
            description=_str(spec, "description"),
            condition=condition,
            source=source,
            actions=actions,
            otherwise=otherwise,
            triggers=triggers,
        )
    except _Refused as refused:
        raise RuleSetError.of([Problem(source, refused.line, refused.reason)]) from None


def load_rule_set(directory: Path) -> tuple[Rule, ...]:
    """Every `*.yaml`/`*.yml` rule of a directory, by file name; all refused if any is bad."""
    if not directory.is_dir():
        raise RuleSetError.of([Problem(str(directory), 0, "no such rules directory")])
    problems: list[Problem] = []
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    for path in files:
        try:
            rule = parse_rule(path.read_text(encoding="utf-8"), str(path))
        except RuleSetError as exc:
            problems.extend(exc.problems)
            continue
        except (OSError, UnicodeError) as exc:
            problems.append(Problem(str(path), 0, f"cannot read: {exc}"))
            continue
        if rule.rule_id in seen:
            problems.append(
                Problem(str(path), 1, f"id {rule.rule_id!r} is used by {seen[rule.rule_id]}")
            )
            continue
        seen[rule.rule_id] = str(path)
        rules.append(rule)
    if problems:
        raise RuleSetError.of(problems)
    return tuple(rules)


class RuleBook:
    """The rules in force; a reload replaces them only when the whole new set is valid."""

    def __init__(self, directory: Path, rules: tuple[Rule, ...] = ()) -> None:
        self.directory = directory
        self.rules = rules

    @classmethod
    def empty(cls) -> RuleBook:
        """No rules (the default directory, not loaded)."""
        return cls(Path("rules"))

    @classmethod
    def at_start(cls, directory: str | Path) -> RuleBook:
        """Load the rules at start-up; a bad set is logged and the engine runs without rules."""
        book = cls(Path(directory))
        try:
            book.reload()
        except RuleSetError as exc:
            log.error("%s; running without rules until a valid set is reloaded", exc.message)
        return book

    def reload(self) -> tuple[Rule, ...]:
        """Load the directory again; RuleSetError leaves the rules in force untouched."""
        rules = load_rule_set(self.directory)
        self.rules = rules
        log.info("rules in force: %s", ", ".join(r.rule_id for r in rules) or "none")
        return rules

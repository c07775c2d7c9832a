"""Property tests shared by trigger filters, trigger splits and profile property conditions (pure).

Comparisons are typed by the filter's value: numbers compare numerically (a numeric string such
as "129.95" counts as a number), everything else as text; a missing property fails every test
except `not_set` and `not_equals`.
"""

from typing import Any

from herald.flows.graph import PropertyFilter

MISSING = object()  # what lookup() returns for an absent path


def lookup(data: dict[str, Any], path: str) -> Any:
    """`properties.size` style dotted paths; a literal key with dots wins over the path."""
    if path in data:
        return data[path]
    current: Any = data
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return MISSING
        current = current[part]
    return current


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def compare(actual: Any, operator: str, expected: Any) -> bool:
    present = actual is not MISSING and actual is not None
    if operator == "is_set":
        return present
    if operator == "not_set":
        return not present
    if not present:
        return operator == "not_equals"
    if operator in ("equals", "not_equals"):
        a, b = _number(actual), _number(expected)
        same = a == b if a is not None and b is not None else _text(actual) == _text(expected)
        return same if operator == "equals" else not same
    if operator == "contains":
        if isinstance(actual, list):
            return any(_text(x) == _text(expected) for x in actual)
        return _text(expected).lower() in _text(actual).lower()
    if operator == "in":
        options = expected if isinstance(expected, list) else [expected]
        return any(compare(actual, "equals", option) for option in options)
    # Both numbers, or else both text: never one of each.
    x: Any = _number(actual)
    y: Any = _number(expected)
    if x is None or y is None:
        x, y = _text(actual), _text(expected)  # ISO dates compare correctly as text
    outcomes: dict[str, bool] = {"gt": x > y, "gte": x >= y, "lt": x < y, "lte": x <= y}
    return outcomes[operator]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def event_matches(
    properties: dict[str, Any], value: float | None, filters: list[PropertyFilter]
) -> bool:
    """All filters hold for an event; `$value` names the event's value."""
    data = {**properties, "$value": value if value is not None else properties.get("$value")}
    return all(compare(lookup(data, f.property), f.operator, f.value) for f in filters)

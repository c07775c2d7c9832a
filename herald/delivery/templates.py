"""Liquid message templates: the parse check flows are validated with, and rendering.

Pure: no database. Undefined variables render as empty text (so `{{ profile.first_name |
default: "there" }}` works for profiles without a name); syntax errors, unknown tags and unknown
filters are problems reported before anything is sent.

Templates are user input rendered in activities and in campaign review, so a render is bounded
by construction, not only at the output: python-liquid's limits cap loops (per loop nest), the
output stream and each capture buffer, and the local namespace; on top of those every filter
call is metered (`_metered`). Its inputs and its result must each stay within
`MAX_VALUE_CHARS` characters, `MAX_ITEMS` items and `MAX_NUMBER_BITS`, and the filters whose
result can be a multiple of their inputs (`append`, `prepend`, `replace*`, `join`, `split`,
`concat`) compute the result's size before they build it. Every other built-in filter's result is
at most a small constant factor (≤ 12 for `url_encode`) of an input that is within the limit, so
no value is ever built far beyond it. A render also has a total budget, since many small steps
add up: `RENDER_WORK_LIMIT` characters through filters and capture buffers, and
`RENDER_ITERATION_LIMIT` loop iterations across all loops. Going over any limit raises
`TemplateError`, which review reports and a send records as a permanent failure.
"""

import re
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from itertools import chain, islice
from typing import Any, cast

from liquid import BoundTemplate, Environment, RenderContext, soft_str
from liquid.exceptions import FilterArgumentError, LiquidError, ResourceLimitError
from liquid.filter import sequence_filter, string_filter
from liquid.output import LimitedStringIO
from liquid.undefined import Undefined

from herald.core.errors import PermanentError

# Profile fields every template sees as `profile.<field>`; properties are merged in beside them.
PROFILE_FIELDS = ("id", "external_id", "email", "phone", "first_name", "last_name", "timezone")

OUTPUT_LIMIT = 1_000_000  # bytes one render may output
LOOP_LIMIT = 10_000  # iterations of one loop nest
# No value may be larger than a whole message, nor an array longer than one loop may walk.
MAX_VALUE_CHARS = OUTPUT_LIMIT
MAX_ITEMS = LOOP_LIMIT
# Numbers stay printable: Python refuses to print ints over 4,300 digits (a ValueError).
MAX_NUMBER_BITS = 4096
# Totals for one render: each step above may be small while thousands of them are not.
RENDER_WORK_LIMIT = 20 * OUTPUT_LIMIT
RENDER_ITERATION_LIMIT = 10 * LOOP_LIMIT


_WORD = re.compile(r"\S+")


class _TemplateLimitError(ResourceLimitError):
    """A value or a render's total over a limit; a LiquidError, so Liquid adds where it is."""


class _Meter:
    """One render's running totals, shared by its context copies, filters and buffers."""

    __slots__ = ("iterations", "work")

    def __init__(self) -> None:
        self.work = 0
        self.iterations = 0

    def charge(self, units: int) -> None:
        self.work += units
        if self.work > RENDER_WORK_LIMIT:
            raise _TemplateLimitError(
                f"render work limit reached: over {RENDER_WORK_LIMIT:,} characters "
                "through filters and captures",
                token=None,
            )

    def loop(self, length: int) -> None:
        self.iterations += length
        if self.iterations > RENDER_ITERATION_LIMIT:
            raise _TemplateLimitError(
                f"render loop limit reached: over {RENDER_ITERATION_LIMIT:,} loop "
                "iterations in one render",
                token=None,
            )


class _MeteredBuffer(LimitedStringIO):
    """A capture buffer: python-liquid limits each one; this also counts them all."""

    def __init__(self, limit: int, meter: _Meter) -> None:
        super().__init__(limit=limit)
        self.meter = meter

    def write(self, text: str) -> int:
        self.meter.charge(len(text))
        return super().write(text)


class _MeteredContext(RenderContext):
    """A render context that carries the render's `_Meter` into every copy of itself."""

    __slots__ = ("meter",)
    meter: _Meter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parent = self.parent_context
        self.meter = parent.meter if isinstance(parent, _MeteredContext) else _Meter()

    def raise_for_loop_limit(self, length: int = 1) -> None:
        # Called as each loop starts with its length: python-liquid caps one nest, this caps
        # the sum over every loop of the render (twenty sequential loops of 10,000, say).
        super().raise_for_loop_limit(length)
        self.meter.loop(length)

    def get_buffer(self, buf: Any = None) -> Any:
        carry = buf.size if isinstance(buf, LimitedStringIO) else 0
        # Only _BoundedEnvironment renders with this context, and it sets the limit.
        limit = cast(int, self.env.output_stream_limit)
        return _MeteredBuffer(limit - carry, self.meter)


class _MeteredTemplate(BoundTemplate):
    context_class = _MeteredContext


def _range_length(value: range) -> int:
    try:
        return len(value)
    except OverflowError:  # past sys.maxsize items
        return sys.maxsize


def _size(value: object, cap: int = MAX_VALUE_CHARS) -> int:
    """About how many characters `value` takes as text (items count too), counted to past `cap`.

    Every node visited adds at least one, so measuring costs no more than the size it returns.
    """
    total = 0
    stack = [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) or 1
        elif isinstance(item, range):
            length = _range_length(item)
            digits = max(abs(item.start), abs(item.stop)).bit_length() // 3 + 2
            total += length * digits
        elif isinstance(item, Mapping):
            total += len(item) + 1
            if total <= cap:
                stack.extend(chain(item.keys(), item.values()))
        elif isinstance(item, list | tuple):
            total += len(item) + 1
            if total <= cap:
                stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        else:
            total += 1
    return total


def _check(name: str, value: object) -> int:
    """The size of a filter's input or result; raises when it is over a limit."""
    kind = type(value)
    if kind is str:  # the common case first: a render calls filters thousands of times
        size = len(value)  # type: ignore[arg-type]
    elif kind is int:
        bits: int = value.bit_length()  # type: ignore[attr-defined]
        if bits > MAX_NUMBER_BITS:
            raise _TemplateLimitError(
                f"{name}: number size limit reached (over {MAX_NUMBER_BITS} bits)", token=None
            )
        return bits // 3 + 1
    elif value is None or kind is float or kind is bool:
        return 1
    else:
        if isinstance(value, range):
            _fits_items(name, _range_length(value))
        elif isinstance(value, list | tuple):
            _fits_items(name, len(value))
        size = _size(value)
    if size > MAX_VALUE_CHARS:
        _too_long(name)
    return size or 1


def _too_long(name: str) -> None:
    raise _TemplateLimitError(
        f"{name}: value size limit reached (over {MAX_VALUE_CHARS:,} characters)", token=None
    )


def _too_many(name: str) -> None:
    raise _TemplateLimitError(
        f"{name}: array size limit reached (over {MAX_ITEMS:,} items)", token=None
    )


def _metered(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with its inputs and result checked against the limits and charged to the render."""
    wants_context = getattr(func, "with_context", False)
    wants_environment = getattr(func, "with_environment", False)

    def metered(left: object, *args: Any, context: RenderContext, **kwargs: Any) -> Any:
        meter = context.meter if isinstance(context, _MeteredContext) else _Meter()
        units = _check(name, left)
        for value in args:
            units += _check(name, value)
        for value in kwargs.values():
            units += _check(name, value)
        meter.charge(units)
        if wants_context:
            kwargs["context"] = context
        if wants_environment:
            kwargs["environment"] = context.env
        result = func(left, *args, **kwargs)
        meter.charge(_check(name, result))
        return result

    metered.with_context = True  # type: ignore[attr-defined]
    if hasattr(func, "validate"):
        metered.validate = func.validate  # type: ignore[attr-defined]
    metered.__name__ = metered.__qualname__ = name
    metered.__doc__ = func.__doc__
    return metered


# The amplifiers, as python-liquid defines them, but sized before they are built.


def _fits(name: str, chars: int) -> None:
    if chars > MAX_VALUE_CHARS:
        _too_long(name)


def _fits_items(name: str, items: int) -> None:
    if items > MAX_ITEMS:
        _too_many(name)


@string_filter
def _append(val: str, arg: object) -> str:
    arg = arg if isinstance(arg, str) else str(arg)
    _fits("append", len(val) + len(arg))
    return val + arg


@string_filter
def _prepend(val: str, arg: object) -> str:
    arg = soft_str(arg)
    _fits("prepend", len(arg) + len(val))
    return arg + val


@string_filter
def _replace(val: str, seq: object, sub: object = "") -> str:
    seq, sub = soft_str(seq), soft_str(sub)
    # str.count("") is len + 1, as many places as str.replace("", ...) fills.
    _fits("replace", len(val) + val.count(seq) * (len(sub) - len(seq)))
    return val.replace(seq, sub)


@string_filter
def _replace_first(val: str, seq: object, sub: object = "") -> str:
    seq, sub = soft_str(seq), soft_str(sub)
    _fits("replace_first", len(val) + (len(sub) - len(seq) if seq in val else 0))
    return val.replace(seq, sub, 1)


@string_filter
def _replace_last(val: str, seq: object, sub: object) -> str:
    seq, sub = soft_str(seq), soft_str(sub)
    if not seq:
        _fits("replace_last", len(val) + len(sub))
        return val + sub
    before, _, after = val.rpartition(seq)
    if not before:
        return val
    _fits("replace_last", len(before) + len(sub) + len(after))
    return before + sub + after


@string_filter
def _split(val: str, sep: object) -> list[str]:
    if isinstance(sep, Undefined):
        sep.poke()
        sep = None
    if sep is None or sep == "":
        _fits_items("split", len(val))
        return list(val)
    sep = soft_str(sep)
    if not val or val == sep:
        return []
    if sep == " ":  # on any run of whitespace; count the words, stopping past the limit
        _fits_items("split", sum(1 for _ in islice(_WORD.finditer(val), MAX_ITEMS + 1)))
        return val.split()
    _fits_items("split", val.count(sep) + 1)
    return val.split(sep)


@sequence_filter
def _join(left: Any, separator: object = " ") -> str:
    separator = separator if isinstance(separator, str) else str(separator)
    parts = [item if isinstance(item, str) else str(item) for item in left]
    _fits("join", sum(map(len, parts)) + len(separator) * max(len(parts) - 1, 0))
    return separator.join(parts)


@sequence_filter
def _concat(sequence: Any, second_array: Any) -> Any:
    if not isinstance(second_array, list | tuple):
        raise FilterArgumentError(
            f"concat expected an array, found {type(second_array).__name__}", token=None
        )
    if isinstance(sequence, Undefined):
        return second_array
    _fits_items("concat", len(sequence) + len(second_array))
    return [*sequence, *second_array]


_SIZED_FILTERS = {
    "append": _append,
    "prepend": _prepend,
    "replace": _replace,
    "replace_first": _replace_first,
    "replace_last": _replace_last,
    "split": _split,
    "join": _join,
    "concat": _concat,
}


class _BoundedEnvironment(Environment):
    """The limits above, on python-liquid's own (a render over one fails as a template error)."""

    template_class = _MeteredTemplate
    loop_iteration_limit = LOOP_LIMIT
    output_stream_limit = OUTPUT_LIMIT
    local_namespace_limit = 100_000
    context_depth_limit = 30

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        self.filters.update(_SIZED_FILTERS)
        self.filters.update({name: _metered(name, f) for name, f in self.filters.items()})


_ENV = _BoundedEnvironment()


class TemplateError(PermanentError, ValueError):
    """A template that cannot be parsed or rendered; the message says where and why.

    `line` and `column` (both from 1, as editors count) locate the problem in the template when
    Liquid knows it; `field` names the template (`content.subject`, ...) when the caller knows
    which one it rendered (herald/delivery/rendering.py sets it).
    """

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(f"{reason} (line {line}, column {column})" if line else reason)
        self.reason, self.line, self.column = reason, line, column
        self.field: str | None = None


@lru_cache(maxsize=512)
def _parse(source: str) -> BoundTemplate:
    # A campaign renders one template for every recipient: parse it once per worker.
    return _ENV.from_string(source)


def template_problem(source: str) -> str | None:
    """Why `source` cannot be rendered (syntax, unknown tag or filter), or None when it can."""
    try:
        template = _parse(source)
    except LiquidError as exc:
        return str(_error(exc, source))
    unknown = sorted(name for name in template.analyze().filters if name not in _ENV.filters)
    if unknown:
        return f"unknown filter {unknown[0]!r}"
    return None


def render(source: str, variables: Mapping[str, Any]) -> str:
    """Renders `source` with `variables`; raises TemplateError on any Liquid error."""
    try:
        return _parse(source).render(**variables)
    except LiquidError as exc:
        raise _error(exc, source) from exc
    except (ArithmeticError, ValueError) as exc:
        # Python refusing a value the template computed (a decimal out of range, say): the
        # template's fault, as permanent as a Liquid error, never a crash to retry.
        raise TemplateError(f"cannot render: {exc}") from exc


def template_variables(profile: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """`profile` (its fields, `properties`, and each property at top level) plus the context.

    A property never shadows a profile field that is set (`profile.email` is always the address)
    but fills one that is empty, as property conditions (herald/flows/conditions.py) see it too.
    """
    properties = dict(profile.get("properties") or {})
    fields = {f: profile.get(f) for f in PROFILE_FIELDS}
    profile_vars = {**fields, **properties, **{f: v for f, v in fields.items() if v}}
    profile_vars["properties"] = properties
    return {**context, "profile": profile_vars}


def _error(exc: LiquidError, source: str) -> TemplateError:
    # str(exc) draws a caret diagram over several lines: keep the reason and where it is.
    reason = str(exc.message or type(exc).__name__)
    if exc.token is None:
        return TemplateError(reason)
    where = exc.context()
    if where is not None:
        line, column = where[0], where[1] + 1  # Liquid counts columns from 0
    else:
        # A block left open ("expected tag endif") is found at the end of the template.
        lines = source.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    return TemplateError(reason, line, column)

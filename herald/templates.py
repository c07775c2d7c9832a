"""Liquid message templates: the parse check flows are validated with, and rendering.

Pure: no database. Undefined variables render as empty text (so `{{ profile.first_name |
default: "there" }}` works for profiles without a name); syntax errors, unknown tags and unknown
filters are problems reported before anything is sent.
"""

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from liquid import BoundTemplate, Environment
from liquid.exceptions import LiquidError

# Profile fields every template sees as `profile.<field>`; properties are merged in beside them.
PROFILE_FIELDS = ("id", "external_id", "email", "phone", "first_name", "last_name", "timezone")


class _BoundedEnvironment(Environment):
    """Templates are user input rendered in activities: cap loops and output so a template
    cannot hang or flood a worker (a render over a limit fails as a template error)."""

    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    local_namespace_limit = 100_000
    context_depth_limit = 30


_ENV = _BoundedEnvironment()


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message says where and why."""


@lru_cache(maxsize=512)
def _parse(source: str) -> BoundTemplate:
    # A campaign renders one template for every recipient: parse it once per worker.
    return _ENV.from_string(source)


def template_problem(source: str) -> str | None:
    """Why `source` cannot be rendered (syntax, unknown tag or filter), or None when it can."""
    try:
        template = _parse(source)
    except LiquidError as exc:
        return _describe(exc)
    unknown = sorted(name for name in template.analyze().filters if name not in _ENV.filters)
    if unknown:
        return f"unknown filter {unknown[0]!r}"
    return None


def render(source: str, variables: Mapping[str, Any]) -> str:
    """Renders `source` with `variables`; raises TemplateError on any Liquid error."""
    try:
        return _parse(source).render(**variables)
    except LiquidError as exc:
        raise TemplateError(_describe(exc)) from exc


def template_variables(profile: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """`profile` (its fields, `properties`, and each property at top level) plus the context.

    A property never shadows a profile field that is set (`profile.email` is always the address)
    but fills one that is empty, as property conditions (herald/conditions.py) see it too.
    """
    properties = dict(profile.get("properties") or {})
    fields = {f: profile.get(f) for f in PROFILE_FIELDS}
    profile_vars = {**fields, **properties, **{f: v for f, v in fields.items() if v}}
    profile_vars["properties"] = properties
    return {**context, "profile": profile_vars}


def _describe(exc: LiquidError) -> str:
    # str(exc) draws a caret diagram over several lines: keep the reason and where it is.
    reason = exc.message or type(exc).__name__
    where = exc.context() if exc.token is not None else None
    return f"{reason} (line {where[0]}, column {where[1]})" if where else reason

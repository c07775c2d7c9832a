"""Flow definition validation: every problem at once, each naming the step (or field) and why.

Pure: no database, no FastAPI. The caller says what exists (metric names, list ids and, once
segments are built, segment ids), so the API and the tests run exactly the same check. Pydantic
has already checked shapes and ranges of single fields (herald.flow_graph); this module checks
what needs the whole definition: the graph, cross-references and templates.
"""

from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from herald.flows.graph import (
    MAX_DELAY_DAYS,
    ConditionalSplit,
    FlowDefinition,
    InternalAlert,
    ListAction,
    ListCondition,
    ListTrigger,
    Message,
    MetricCountCondition,
    MetricTrigger,
    ProfileCondition,
    RandomSplit,
    SegmentCondition,
    SegmentTrigger,
    Step,
    TimeDelay,
    TriggerSplit,
    WaitForEvent,
    WebhookStep,
    delay_seconds,
    successors,
)
from models.enums import Channel

SEGMENTS_UNAVAILABLE = (
    "segments are not available yet: segment triggers and conditions can be used once "
    "segments are built"
)
_MAX_DELAY_SECONDS = MAX_DELAY_DAYS * 86400


def validate_definition(
    defn: FlowDefinition,
    known_metrics: set[str],
    known_lists: set[str],
    known_segments: set[str] | None = None,
    draft_segments: frozenset[str] | set[str] = frozenset(),
) -> list[dict[str, str]]:
    """Every problem of `defn` as [{"field", "reason"}]; an empty list means it is valid.

    Fields name the step as `steps[<index>] (<step id>).<field>`. `known_segments` is None while
    this installation has no segments, which makes every segment reference a problem; it holds the
    live segments, and `draft_segments` those that exist but must be set live before use.
    """
    check = _Check(defn, known_metrics, known_lists, known_segments)
    check.draft_segments = set(draft_segments)
    check.flow_level()
    for index, step in enumerate(defn.steps):
        check.step(index, step)
    check.graph()
    return check.problems


class _Check:
    def __init__(
        self,
        defn: FlowDefinition,
        metrics: set[str],
        lists: set[str],
        segments: set[str] | None,
    ) -> None:
        self.defn = defn
        self.metrics, self.lists, self.segments = metrics, lists, segments
        self.problems: list[dict[str, str]] = []
        self.draft_segments: set[str] = set()
        # The first step of each id: what edges lead to (duplicates are reported, not followed).
        self.index_of: dict[str, int] = {}
        for i, step in enumerate(defn.steps):
            self.index_of.setdefault(step.id, i)
        # Imported here: templates pull in the Liquid environment, which only validation needs.
        from herald.delivery.templates import template_problem

        self._template_problem = template_problem

    def add(self, field: str, reason: str) -> None:
        self.problems.append({"field": field, "reason": reason})

    # ---- references ----------------------------------------------------------------------------

    def metric(self, field: str, name: str) -> None:
        if name not in self.metrics:
            self.add(field, f"unknown metric {name!r} (a metric exists once an event names it)")

    def list_id(self, field: str, list_id: str) -> None:
        if list_id not in self.lists:
            self.add(field, f"no list has id {list_id!r}")

    def segment(self, field: str, segment_id: str) -> None:
        if self.segments is None:
            self.add(field, SEGMENTS_UNAVAILABLE)
        elif segment_id in self.draft_segments:
            self.add(field, f"segment {segment_id!r} is a draft: set it live first")
        elif segment_id not in self.segments:
            self.add(field, f"no segment has id {segment_id!r}")

    def condition(self, field: str, condition: ProfileCondition) -> None:
        if isinstance(condition, MetricCountCondition):
            self.metric(f"{field}.metric", condition.metric)
        elif isinstance(condition, ListCondition):
            self.list_id(f"{field}.list_id", condition.list_id)
        elif isinstance(condition, SegmentCondition):
            self.segment(f"{field}.segment_id", condition.segment_id)

    def template(self, field: str, source: str | None) -> None:
        if source is not None and (problem := self._template_problem(source)) is not None:
            self.add(field, f"template does not parse: {problem}")

    def url(self, field: str, url: str) -> None:
        # Scheme and host only: whether the host is safe to call is checked when it is called.
        try:
            parts = urlsplit(url.strip())
            host = parts.hostname
        except ValueError:
            self.add(field, "not a valid URL")
            return
        if parts.scheme.lower() not in ("http", "https"):
            self.add(field, "must be an http:// or https:// URL")
        elif not host:
            self.add(field, "the URL has no host")

    # ---- flow level ----------------------------------------------------------------------------

    def flow_level(self) -> None:
        defn = self.defn
        trigger = defn.trigger
        if isinstance(trigger, MetricTrigger):
            self.metric("trigger.metric", trigger.metric)
        elif isinstance(trigger, ListTrigger):
            self.list_id("trigger.list_id", trigger.list_id)
        elif isinstance(trigger, SegmentTrigger):
            self.segment("trigger.segment_id", trigger.segment_id)
        for i, condition in enumerate(defn.filters):
            self.condition(f"filters[{i}]", condition)
        reentry = defn.reentry
        if reentry.mode == "cooldown" and reentry.cooldown_days is None:
            self.add("reentry.cooldown_days", "required when mode is 'cooldown'")
        if reentry.mode != "cooldown" and reentry.cooldown_days is not None:
            self.add(
                "reentry.cooldown_days", f"only applies to mode 'cooldown', not {reentry.mode!r}"
            )
        if defn.exit_metric is not None:
            self.metric("exit_metric", defn.exit_metric)
        if defn.entry is not None and defn.entry not in self.index_of:
            self.add("entry", f"no step has id {defn.entry!r}")

    # ---- one step ------------------------------------------------------------------------------

    def step(self, index: int, step: Step) -> None:
        label = _label(index, step)
        if (first := self.index_of[step.id]) != index:
            self.add(f"{label}.id", f"duplicate step id (also steps[{first}])")
        for field, target in successors(step):
            if target is not None and target not in self.index_of:
                self.add(f"{label}.{field}", f"no step has id {target!r}")

        if isinstance(step, TimeDelay):
            if (step.at_time is not None or step.weekdays) and step.unit != "days":
                self.add(
                    f"{label}.unit",
                    "at_time and weekdays need unit 'days' (N days, then at a time of day)",
                )
            if delay_seconds(step.amount, step.unit) > _MAX_DELAY_SECONDS:
                self.add(
                    f"{label}.amount",
                    f"{step.amount} {step.unit} is longer than the maximum delay of "
                    f"{MAX_DELAY_DAYS} days",
                )
        elif isinstance(step, WaitForEvent):
            self.metric(f"{label}.metric", step.metric)
            if delay_seconds(step.timeout_amount, step.timeout_unit) > _MAX_DELAY_SECONDS:
                self.add(
                    f"{label}.timeout_amount",
                    f"{step.timeout_amount} {step.timeout_unit} is longer than the maximum "
                    f"wait of {MAX_DELAY_DAYS} days",
                )
        elif isinstance(step, Message):
            subject = step.content.subject
            if step.channel is Channel.email and not (subject and subject.strip()):
                self.add(f"{label}.content.subject", "an email needs a subject")
            self.template(f"{label}.content.subject", subject)
            self.template(f"{label}.content.body", step.content.body)
            self.template(f"{label}.content.text", step.content.text)
            template = step.content.whatsapp_template
            if step.channel is Channel.whatsapp and template is None:
                self.add(
                    f"{label}.content.whatsapp_template",
                    "a business-initiated WhatsApp message must use an approved content "
                    "template (content_sid HX...)",
                )
            for key, value in (template.variables if template else {}).items():
                self.template(f"{label}.content.whatsapp_template.variables.{key}", value)
        elif isinstance(step, ConditionalSplit):
            for i, condition in enumerate(step.conditions):
                self.condition(f"{label}.conditions[{i}]", condition)
        elif isinstance(step, TriggerSplit):
            if not isinstance(trigger := self.defn.trigger, MetricTrigger):
                self.add(
                    label,
                    "a trigger split tests the trigger event's properties, so it needs a "
                    f"metric trigger (this flow's trigger is {trigger.type!r})",
                )
        elif isinstance(step, RandomSplit):
            self.random_split(label, step)
        elif isinstance(step, ListAction):
            self.list_id(f"{label}.list_id", step.list_id)
        elif isinstance(step, WebhookStep):
            self.url(f"{label}.url", step.url)
            self.template(f"{label}.body", step.body)
        elif isinstance(step, InternalAlert):
            if step.via == "webhook":
                self.url(f"{label}.to", step.to)
            else:
                try:
                    validate_email(step.to.strip(), check_deliverability=False)
                except EmailNotValidError as exc:
                    self.add(f"{label}.to", f"not a valid email address: {exc}")
            self.template(f"{label}.subject", step.subject)
            self.template(f"{label}.body", step.body)

    def random_split(self, label: str, step: RandomSplit) -> None:
        # Weights are relative shares (2 and 1 send two thirds down the first branch). The model
        # bounds each weight; re-checked here for definitions built without validation.
        for i, branch in enumerate(step.branches):
            if branch.weight < 1:
                self.add(f"{label}.branches[{i}].weight", "must be a positive whole number")
        targets = {branch.next for branch in step.branches}
        if len(targets) == 1:
            [target] = targets
            where = "the end of the flow" if target is None else repr(target)
            self.add(
                f"{label}.branches",
                f"every branch leads to {where}, so the split has no effect",
            )

    # ---- the graph -----------------------------------------------------------------------------

    def graph(self) -> None:
        """Unreachable steps and cycles, over the first step of each id."""
        defn, index_of = self.defn, self.index_of
        edges = {
            step_id: [
                (field, target)
                for field, target in successors(defn.steps[i])
                if target is not None and target in index_of
            ]
            for step_id, i in index_of.items()
        }

        entry = defn.entry_step
        if entry in index_of:
            reached, todo = {entry}, [entry]
            while todo:
                for _, target in edges[todo.pop()]:
                    if target not in reached:
                        reached.add(target)
                        todo.append(target)
            for step_id, i in index_of.items():
                if step_id not in reached:
                    self.add(
                        _label(i, defn.steps[i]),
                        f"unreachable: no path from the entry step {entry!r} leads here",
                    )

        # Depth-first search; an edge back to a step on the current path closes a cycle.
        done: set[str] = set()
        for root in index_of:
            if root in done:
                continue
            path, on_path = [root], {root}
            stack = [iter(edges[root])]
            while stack:
                edge = next(stack[-1], None)
                if edge is None:
                    stack.pop()
                    finished = path.pop()
                    on_path.discard(finished)
                    done.add(finished)
                    continue
                field, target = edge
                if target in on_path:
                    source = path[-1]
                    cycle = [*path[path.index(target) :], target]
                    self.add(
                        f"{_label(index_of[source], defn.steps[index_of[source]])}.{field}",
                        f"leads back to {target!r}, a cycle ({' -> '.join(cycle)}); "
                        "steps must not loop",
                    )
                elif target not in done:
                    path.append(target)
                    on_path.add(target)
                    stack.append(iter(edges[target]))


def _label(index: int, step: Step) -> str:
    return f"steps[{index}] ({step.id})"

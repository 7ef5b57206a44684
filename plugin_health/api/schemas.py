"""The marshmallow schemas of the HTTP API; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from plugin_health.api.pages import MAX_LIMIT, decode_token
from plugin_health.diagrams import FORMATS
from plugin_health.health import STATUSES
from plugin_health.lifecycle import PluginLifecycleState

#: What an observed value may be, in OpenAPI 3.0 terms: a JSON scalar (each branch nullable, as 3.0.3 reads
#: ``nullable`` only beside a ``type``).
OBSERVED_VALUE: dict[str, Any] = {
    "anyOf": [{"type": kind, "nullable": True} for kind in ("string", "number", "boolean")]}


class PluginHealthResponse(Schema):
    """The health of one plugin."""

    name = fields.String(required=True)
    version = fields.String(allow_none=True, metadata={"description": "PEP 440; null if its code never loaded"})
    state = fields.Enum(PluginLifecycleState, required=True)
    healthy = fields.Boolean(required=True, metadata={
        "description": "RUNNING, its last health check passed, and that check is not stale"})
    stale = fields.Boolean(required=True, metadata={
        "description": "RUNNING, but its last health check (or, if none yet, its start) is older than the health "
                       "interval plus its timeout plus 1 s: the host has not checked it when it should have, so it "
                       "is not healthy"})
    reason = fields.String(allow_none=True, metadata={
        "description": "why it is in its state (FAILED, UNAVAILABLE); for a stale plugin, "
                       "'stale: last health check N s ago' (or 'stale: no health check completed since it started')"})
    error_type = fields.String(allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "shown per PLUGIN_HEALTH_SHOW_DETAILS"})
    since = fields.AwareDateTime(required=True, metadata={"description": "time of the last transition (UTC)"})
    requires = fields.List(fields.String(), required=True)
    critical = fields.Boolean(required=True)
    isolation = fields.String(allow_none=True)
    tools = fields.List(fields.String(), required=True)
    consecutive_failures = fields.Integer(required=True)
    restarts = fields.Integer(required=True)
    last_check = fields.AwareDateTime(allow_none=True)
    allowed = fields.List(fields.String(), required=True, metadata={"description": "triggers legal now"})
    singleton = fields.Boolean(required=True, metadata={
        "description": "declared singleton = True: it runs on one instance of the cluster at a time"})
    owner = fields.String(allow_none=True, metadata={
        "description": "for a singleton: the instance that holds its lease (runs it), as last seen; else null"})
    standby = fields.Boolean(required=True, metadata={
        "description": "a singleton on standby here, shown as its owner runs it (state, checks); this instance's "
                       "readiness and aggregate status do not count it"})
    check_status = fields.String(required=True, allow_none=True, validate=validate.OneOf(STATUSES), metadata={
        "description": "what its last health check said: pass, warn or fail (a check that raised, timed out or "
                       "returned a value that means nothing: fail); null before the first one"})
    observed_value = fields.Raw(required=True, allow_none=True, metadata={
        "description": "the value its last health check observed (a HealthResult's observed_value: a string, "
                       "number or boolean); null when it reported none", **OBSERVED_VALUE})
    observed_unit = fields.String(required=True, allow_none=True, metadata={
        "description": "the unit of observed_value (ms, ratio, ...); null when it reported none"})
    check_output = fields.String(required=True, allow_none=True, metadata={
        "description": "its last health check's output (a failed call: its error message), at most 2,000 "
                       "characters; shown per PLUGIN_HEALTH_SHOW_DETAILS, as error is"})
    degraded = fields.Boolean(required=True, metadata={
        "description": "healthy, but its last health check said warn: it still counts as healthy for readiness, "
                       "and makes the aggregate status warn"})


class HistoryEntry(Schema):
    """One recorded transition."""

    plugin = fields.String(required=True)
    source = fields.Enum(PluginLifecycleState, data_key="from", allow_none=True, required=True)
    dest = fields.Enum(PluginLifecycleState, data_key="to", required=True)
    trigger = fields.String(required=True)
    reason = fields.String(allow_none=True)
    error_type = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    at = fields.AwareDateTime(required=True)
    instance = fields.String(dump_only=True, metadata={
        "description": "the instance it happened on (a singleton's history holds every instance's)"})


class HealthCheck(Schema):
    """One check in the aggregate (IETF health-check draft), keyed ``component:measurement``: a plugin
    (``<name>:health``), the plugin host (``host:heartbeat``, only while no live process hosts the plugins) or the
    store (``store:degraded``, only while it is)."""

    componentId = fields.String(metadata={"description": "the plugin's name (every plugin check)"})
    componentType = fields.String(required=True, metadata={
        "description": "component for a plugin, system for the host, datastore for the store"})
    status = fields.String(required=True, validate=validate.OneOf(STATUSES), metadata={
        "description": "a plugin's: pass when it is healthy and its last check passed; warn when it is healthy but "
                       "its last check warned, or when it is not healthy and not critical; fail when a critical "
                       "plugin is not healthy"})
    observedValue = fields.Raw(allow_none=True, metadata={
        "description": "the value the plugin's last health check observed; null when it reported none (every "
                       "plugin check)", **OBSERVED_VALUE})
    observedUnit = fields.String(allow_none=True, metadata={
        "description": "the unit of observedValue; null when it reported none (every plugin check)"})
    time = fields.String(metadata={
        "description": "ISO-8601 (UTC): when the plugin's last health check observed this; before its first check, "
                       "its last transition (every plugin check)"})
    output = fields.String(metadata={
        "description": "why the check is not pass: the plugin's state, reason and error type, whether it is stale, "
                       "and, to a caller who may see details, its error and its last check's output"})


class AggregateHealth(Schema):
    """The aggregate health of the service, ``application/health+json``."""

    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    version = fields.String(required=True, metadata={"description": "the version of plugin-health"})
    releaseId = fields.String(required=True, metadata={
        "description": "PLUGIN_HEALTH_RELEASE_ID, or else the version of plugin-health"})
    serviceId = fields.String(required=True)
    description = fields.String(required=True)
    notes = fields.List(fields.String())
    checks = fields.Dict(keys=fields.String(), values=fields.List(fields.Nested(HealthCheck)), required=True)


class ProblemDetails(Schema):
    """RFC 9457 problem details, with the extension members some problems carry."""

    type = fields.String(required=True, metadata={
        "description": "https://plugin-health.dev/problems/ followed by the problem's slug (the README lists them)",
        "pattern": r"^https://plugin-health\.dev/problems/[a-z0-9]+(-[a-z0-9]+)*$"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "invalid-request: the message(s) of each invalid parameter"})
    plugin = fields.String(metadata={"description": "the plugin the problem is about"})
    state = fields.String(allow_none=True, metadata={"description": "the plugin's state (null: untracked)"})
    attempted = fields.String(metadata={"description": "IllegalTransitionError: the move refused"})
    allowed = fields.List(fields.String(), metadata={"description": "IllegalTransitionError: the triggers legal now"})
    available = fields.List(fields.String(),
                            metadata={"description": "RendererUnavailableError: the formats that can be drawn here"})
    tool = fields.String(metadata={"description": "a tool call's problem: the tool called"})
    queue_limit = fields.Integer(metadata={"description": "plugin-busy: how many calls of the plugin may wait"})
    dependency = fields.String(metadata={"description": "dependency-not-ready: the dependency that is not"})
    reason = fields.String(metadata={"description": "dependency-not-ready: why the plugin stays UNAVAILABLE"})


class ToolFailure(ProblemDetails):
    """A failed tool call (502, 504) or one refused because its plugin is busy (429): a problem whose members
    are also the sandbox result's fields."""

    plugin = fields.String(required=True, metadata={"description": "the plugin the tool belongs to"})
    tool = fields.String(required=True, metadata={"description": "the tool called"})
    ok = fields.Boolean(required=True, metadata={"description": "always false"})
    result = fields.Raw(allow_none=True, required=True, metadata={"description": "always null"})
    error = fields.String(allow_none=True, required=True,
                          metadata={"description": "shown per PLUGIN_HEALTH_SHOW_DETAILS"})
    error_type = fields.String(required=True, metadata={
        "description": "the exception's class name: the plugin's own, PluginTimeoutError (504), PluginCrashedError, "
                       "PluginMemoryError, UnserializableResultError, ResultTooLargeError, PluginBusyError (429)"})
    duration_ms = fields.Float(required=True, metadata={"description": "0 for a call refused before it ran"})


class ClusterPlugin(Schema):
    """One plugin on one instance, as the cluster view shows it (no error message: only what anyone may see)."""

    state = fields.Enum(PluginLifecycleState, required=True)
    healthy = fields.Boolean(required=True, metadata={
        "description": "RUNNING, its last health check passed, and that check is not stale"})
    stale = fields.Boolean(required=True, metadata={"description": "RUNNING, but its last health check is overdue"})
    critical = fields.Boolean(required=True)
    reason = fields.String(allow_none=True, required=True, metadata={
        "description": "why it is in its state; for a stale plugin, 'stale: last health check N s ago'"})
    error_type = fields.String(allow_none=True, required=True, metadata={
        "description": "the exception's class name (PluginDefinedError for a class a plugin defined, unless the "
                       "caller may see details)"})
    since = fields.AwareDateTime(required=True, metadata={"description": "time of the last transition (UTC)"})
    last_check = fields.AwareDateTime(allow_none=True, required=True)
    check_status = fields.String(allow_none=True, required=True, metadata={
        "description": "what its last health check said: pass, warn or fail (null before any check)"})
    degraded = fields.Boolean(required=True, metadata={"description": "healthy, but its last check said warn"})
    owner = fields.String(allow_none=True, required=True, metadata={
        "description": "for a singleton: the instance that runs it (holds its lease), as last seen; else null"})
    standby = fields.Boolean(required=True, metadata={
        "description": "a singleton on standby on this instance (UNAVAILABLE here: it runs on its owner)"})


class ClusterInstance(Schema):
    """One instance of the cluster: its heartbeat, its health as it would judge it itself, and its plugins."""

    id = fields.String(required=True, metadata={"description": "the instance's id (PLUGIN_HEALTH_INSTANCE)"})
    is_self = fields.Boolean(data_key="self", required=True, metadata={
        "description": "the instance that answered"})
    pid = fields.Integer(allow_none=True, required=True, metadata={
        "description": "the process hosting its plugins; null: it never beat"})
    started = fields.AwareDateTime(allow_none=True, required=True, metadata={
        "description": "when that process started (UTC); null: it never beat"})
    heartbeat = fields.AwareDateTime(allow_none=True, required=True, metadata={
        "description": "its last heartbeat (UTC); null: it never beat"})
    age = fields.Float(allow_none=True, required=True, metadata={
        "description": "seconds since its last heartbeat (one decimal); null: it never beat"})
    gone = fields.Boolean(required=True, metadata={
        "description": "it stopped, never beat, or has not beaten for 3 s (for the instance answering: no live "
                       "process hosts its plugins)"})
    status = fields.String(required=True, validate=validate.OneOf(STATUSES), metadata={
        "description": "what its GET /v1/health would say (a gone instance fails)"})
    ready = fields.Boolean(required=True, metadata={
        "description": "what its GET /readyz would say: not gone, loaded, every critical plugin healthy"})
    plugins = fields.Dict(keys=fields.String(), values=fields.Nested(ClusterPlugin), required=True,
                          metadata={"description": "its plugins, by name"})


class ClusterDocument(Schema):
    """Every instance sharing the store, and each plugin's state on each, as one instance sees them."""

    instance = fields.String(required=True, metadata={"description": "the id of the instance that answered"})
    degraded = fields.String(allow_none=True, required=True, metadata={
        "description": "null while the view is live; else why it shows the last known states"})
    plugins = fields.List(fields.String(), required=True, metadata={
        "description": "the name of every plugin of any instance shown, sorted"})
    instances = fields.List(fields.Nested(ClusterInstance), required=True, metadata={
        "description": "ordered by id"})


class InstanceResult(Schema):
    """What an operator action did on one instance: the plugin after it, or the problem it met."""

    instance = fields.String(required=True)
    status = fields.Integer(required=True, metadata={
        "description": "200, or the status the problem would have answered alone"})
    plugin = fields.Nested(PluginHealthResponse, metadata={"description": "status 200: the plugin after the action"})
    problem = fields.Nested(ProblemDetails, metadata={"description": "any other status: the problem"})


class MultiInstanceResult(Schema):
    """An operator action on every live instance (``?instance=all``): one result each, ordered by instance id."""

    results = fields.List(fields.Nested(InstanceResult), required=True)


class ToolCall(Schema):
    """The body of a tool call."""

    args = fields.List(fields.Raw(allow_none=True), load_default=list)
    kwargs = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), load_default=dict)


class ToolResult(Schema):
    """What a tool call returned: the sandbox's result."""

    ok = fields.Boolean(required=True)
    result = fields.Raw(allow_none=True, required=True)
    error = fields.String(allow_none=True, required=True,
                          metadata={"description": "shown per PLUGIN_HEALTH_SHOW_DETAILS"})
    error_type = fields.String(allow_none=True, required=True)
    duration_ms = fields.Float(required=True)


#: The lifecycle states by name, as every caller may spell them.
STATE_NAMES = tuple(state.value for state in PluginLifecycleState)


def parse_state(text: str) -> PluginLifecycleState:
    """The lifecycle state named ``text`` in any case (``failed``, ``Failed``, ``FAILED``), as both the HTTP API
    (``?state=``) and the CLI (``--state``) take it; ``ValueError`` naming the valid ones for anything else."""
    # ASCII only: str.upper() maps some other letters onto ASCII ones (the dotless i onto I).
    name = text.upper() if text.isascii() else ""
    if name not in STATE_NAMES:
        raise ValueError(f"not a lifecycle state: one of {', '.join(STATE_NAMES)} (in any case)")
    return PluginLifecycleState(name)


class StateField(fields.Field):  # type: ignore[type-arg]
    """A lifecycle state by name, in any case (``parse_state``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> PluginLifecycleState:
        if not isinstance(value, str):
            raise ValidationError(f"not a lifecycle state: one of {', '.join(STATE_NAMES)} (in any case)")
        try:
            return parse_state(value)
        except ValueError as err:
            raise ValidationError(str(err)) from None


class ContinueField(fields.Field):  # type: ignore[type-arg]
    """A continue token of the plugin list, loaded as the name the next page starts after."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        try:
            return decode_token(value if isinstance(value, str) else "")
        except ValueError as err:
            raise ValidationError(str(err)) from None


class ListQuery(Schema):
    """Query of the plugin list: a state to filter by, and a page (``limit``, ``continue``)."""

    state = StateField(load_default=None)
    limit = fields.Integer(load_default=None, strict=False, validate=validate.Range(1, MAX_LIMIT), metadata={
        "description": f"at most this many plugins (1-{MAX_LIMIT}); the next page's token comes in X-Continue"})
    after = ContinueField(data_key="continue", load_default=None, metadata={
        "description": "where the page before ended (its X-Continue, opaque)"})


class DiagramQuery(Schema):
    """Query of the diagram routes."""

    format = fields.String(load_default="svg", validate=validate.OneOf(FORMATS))


plugin_health_response = PluginHealthResponse()
plugin_health_list = PluginHealthResponse(many=True)
history_entries = HistoryEntry(many=True)
list_query = ListQuery()
tool_call = ToolCall()
tool_result = ToolResult()
diagram_query = DiagramQuery()

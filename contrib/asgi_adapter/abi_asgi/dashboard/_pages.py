"""The dashboard's pages and actions.

Every read and every action goes through the REST operations
(:func:`abi_engine.api.call` with the signed-in token's principal), so scope
checks, validation and errors are those of ``/api/v1``. What no operation
offers (the overview's counts, an execution's step results, signals and
callback deliveries, what a waiting execution waits for) is read from the
engine's services after the same scope check (:meth:`Principal.require`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from abi_asgi._app import parse_json_body
from abi_asgi.dashboard import _format
from abi_asgi.dashboard._web import Context, Dashboard, form_of, redirect
from abi_engine.converter import unstructure
from abi_engine.errors import AbiError, ExecutionNotFound, InvalidRequest, NotFound
from abi_engine.ids import format_time
from abi_engine.models import Scope

__all__ = ["Pages"]

PAGE_SIZE = 20
FINISHED = frozenset({"completed", "failed", "timed_out", "cancelled", "skipped"})
STATUSES = (
    "queued",
    "running",
    "waiting",
    "paused",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
)


def _page(ctx: Context) -> str:
    """The ``page`` asked for, as given: the operation checks it (a bad one is a 400)."""
    return ctx.request.query_params.get("page") or "1"


def _paged(ctx: Context, page: dict[str, Any]) -> dict[str, Any]:
    """``page`` (an operation's paginated answer), or 404 when it lies past the last
    page of a list that has items (an empty list has only its page 1)."""
    pagination = page["pagination"]
    last = max(1, pagination["total_pages"])
    if pagination["page"] > last:
        raise NotFound(
            ctx.request.url.path,
            f"No page {pagination['page']}: this list has {last} page{'s' if last > 1 else ''}",
        )
    return page


def _pick(ctx: Context, *names: str) -> dict[str, str]:
    """The non-empty query values among ``names``."""
    params = ctx.request.query_params
    return {n: params[n] for n in names if params.get(n)}


class Pages:
    """Handlers of every page, bound to one :class:`Dashboard`."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.engine = dash.engine

    def render(self, ctx: Context, template: str, status: int = 200, **values: Any) -> Response:
        return self.dash.render(ctx.request, template, ctx, status=status, **values)

    async def _count(self, ctx: Context, **query: Any) -> int:
        page = await self.dash.op(ctx, "list_executions", query={**query, "page_size": "1"})
        total: int = page["pagination"]["total_items"]
        return total

    # -- overview -------------------------------------------------------------------------------

    async def overview(self, ctx: Context) -> Response:
        chosen = ctx.request.query_params.get("range") or "day"
        if chosen not in _format.RANGES:
            raise InvalidRequest(
                f"'range' must be one of {', '.join(_format.RANGES)}", {"field": "range"}
            )
        label, span, bucket = _format.RANGES[chosen]
        values: dict[str, Any] = {"range": chosen, "ranges": _format.RANGES, "range_label": label}
        if ctx.can(Scope.EXECUTIONS_READ):
            ctx.principal.require(Scope.EXECUTIONS_READ)
            now = datetime.now(UTC)
            start = now - span
            counts = await self.engine.executions.counts(start, now, int(bucket.total_seconds()))
            values["chart"] = _format.build_chart(counts, start, span, bucket)
            values["queued"] = await self._count(ctx, status="queued")
            values["running"] = await self._count(ctx, status="running")
            values["waiting"] = await self._count(ctx, status="waiting")
            failures = await self.dash.op(
                ctx, "list_executions", query={"status": "failed,timed_out", "page_size": "5"}
            )
            values["failures"] = failures["items"]
        if ctx.can(Scope.SCHEDULES_READ):
            listed = await self.dash.op(
                ctx, "list_schedules", query={"enabled": "true", "page_size": "100"}
            )
            upcoming = [s for s in listed["items"] if s.get("next_execution")]
            upcoming.sort(key=lambda s: s["next_execution"])
            values["upcoming"] = upcoming[:5]
        if ctx.can(Scope.WEBHOOKS_ADMIN):
            values["failed_deliveries"] = await self._failed_deliveries(ctx)
        return self.render(ctx, "overview.html", **values)

    async def _failed_deliveries(self, ctx: Context) -> list[dict[str, Any]]:
        hooks = await self.dash.op(ctx, "list_webhooks", query={"page_size": "20"})
        failed: list[dict[str, Any]] = []
        for hook in hooks["items"]:
            page = await self.dash.op(
                ctx,
                "list_webhook_deliveries",
                path={"webhook_id": hook["id"]},
                query={"page_size": "10"},
            )
            failed.extend(
                {**d, "webhook_url": hook["url"]} for d in page["items"] if d["status"] == "failed"
            )
        failed.sort(key=lambda d: d["updated_at"], reverse=True)
        return failed[:5]

    # -- workflows ------------------------------------------------------------------------------

    async def workflows(self, ctx: Context) -> Response:
        filters = _pick(ctx, "status", "type")
        page = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "list_workflows",
                query={**filters, "page": _page(ctx), "page_size": str(PAGE_SIZE)},
            ),
        )
        stats = {}
        for item in page["items"]:
            full = await self.dash.op(ctx, "get_workflow", path={"workflow_id": item["id"]})
            stats[item["id"]] = full["stats"]
        types = await self.dash.op(ctx, "list_workflow_types", query={"page_size": "100"})
        return self.render(
            ctx,
            "workflows.html",
            page=page,
            stats=stats,
            filters=filters,
            types=[t["name"] for t in types["items"]],
        )

    async def workflow(self, ctx: Context, status: int = 200, **extra: Any) -> Response:
        workflow_id = ctx.request.path_params["workflow_id"]
        workflow = await self.dash.op(ctx, "get_workflow", path={"workflow_id": workflow_id})
        types = await self.dash.op(ctx, "list_workflow_types", query={"page_size": "100"})
        schema: dict[str, Any] = next(
            (
                t.get("parameters_schema") or {}
                for t in types["items"]
                if t["name"] == workflow["type"]
            ),
            {},
        )
        values: dict[str, Any] = {"workflow": workflow, "schema": schema, "fields": _fields(schema)}
        if ctx.can(Scope.SCHEDULES_READ):
            values["schedules"] = await self.dash.op(
                ctx, "list_schedules", query={"workflow_id": workflow_id, "page_size": "10"}
            )
        if ctx.can(Scope.EXECUTIONS_READ):
            values["executions"] = await self.dash.op(
                ctx, "list_executions", query={"workflow_id": workflow_id, "page_size": "10"}
            )
        return self.render(ctx, "workflow.html", status=status, form={}, **values, **extra)

    async def run(self, ctx: Context) -> Response:
        workflow_id = ctx.request.path_params["workflow_id"]
        form = form_of(ctx)
        try:
            workflow = await self.dash.op(ctx, "get_workflow", path={"workflow_id": workflow_id})
            types = await self.dash.op(ctx, "list_workflow_types", query={"page_size": "100"})
            schema = next(
                (
                    t.get("parameters_schema") or {}
                    for t in types["items"]
                    if t["name"] == workflow["type"]
                ),
                {},
            )
            parameters = _parameters(form, schema)
            execution = await self.dash.op(
                ctx,
                "execute_workflow_async",
                path={"workflow_id": workflow_id},
                body={"parameters": parameters},
            )
        except AbiError as exc:
            if exc.http_status in (401, 403, 404):
                raise
            response = await self.workflow(ctx, status=exc.http_status, run_error=exc)
            return response
        return redirect(ctx, f"/executions/{execution['execution_id']}")

    # -- executions -----------------------------------------------------------------------------

    async def executions(self, ctx: Context) -> Response:
        filters = _pick(ctx, "workflow_id", "schedule_id", "start_date", "end_date")
        statuses = [s for s in ctx.request.query_params.getlist("status") if s]
        query: dict[str, Any] = {
            k: _rfc3339(v) if k.endswith("_date") else v for k, v in filters.items()
        }
        if statuses:
            query["status"] = statuses
        page = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "list_executions",
                query={**query, "page": _page(ctx), "page_size": str(PAGE_SIZE)},
            ),
        )
        live = any(item["status"] not in FINISHED for item in page["items"])
        return self.render(
            ctx,
            "executions.html",
            page=page,
            filters=filters,
            statuses=statuses,
            all_statuses=STATUSES,
            live=live,
        )

    async def execution(self, ctx: Context) -> Response:
        execution_id = ctx.request.path_params["execution_id"]
        execution = await self.dash.op(ctx, "get_execution", path={"execution_id": execution_id})
        details = await self.engine.executions.details(execution_id)
        callbacks = unstructure(await self.engine.webhooks.callback_deliveries(execution_id))
        answers = ctx.can(Scope.WEBHOOKS_ADMIN)
        if not answers:  # what a URL answered: only for those who see webhook answers
            for delivery in callbacks:
                for attempt in delivery.get("attempts") or ():
                    attempt["error"] = attempt["response_body"] = None
        reruns = await self.dash.op(
            ctx, "list_executions", query={"rerun_of": execution_id, "page_size": "20"}
        )
        children = await self.dash.op(
            ctx,
            "list_executions",
            query={"parent_execution_id": execution_id, "page_size": "50"},
        )
        return self.render(
            ctx,
            "execution.html",
            execution=execution,
            reruns=reruns["items"],
            children=children["items"],
            finished=execution["status"] in FINISHED,
            rows=_format.timeline(execution),
            results=details.results,
            signals=details.signals,
            progress=details.progress,
            callbacks=callbacks,
            callback_answers=answers,
            live=execution["status"] not in FINISHED,
            cancellable=execution["status"] in ("queued", "running", "waiting", "paused"),
            approval=details.approval,
            waiting_for=details.waiting_for,
        )

    async def cancel(self, ctx: Context) -> Response:
        execution_id = ctx.request.path_params["execution_id"]
        await self.dash.op(ctx, "cancel_execution", path={"execution_id": execution_id})
        return redirect(ctx, f"/executions/{execution_id}")

    async def rerun(self, ctx: Context) -> Response:
        """Rerun from the step chosen (default: the first that did not complete), with the
        pinned configuration or the workflow's current one; shows the new execution."""
        execution_id = ctx.request.path_params["execution_id"]
        form = form_of(ctx)
        body: dict[str, Any] = {}
        step = form.get("from_step", "")
        if step:  # the index of the step chosen
            body["from_step"] = int(step) if step.isdigit() else step
        if form.get("configuration") == "current":
            body["configuration"] = "current"
        started = await self.dash.op(
            ctx, "rerun_execution", path={"execution_id": execution_id}, body=body
        )
        return redirect(ctx, f"/executions/{started['execution_id']}")

    async def pause_or_resume(self, ctx: Context) -> Response:
        execution_id = ctx.request.path_params["execution_id"]
        name = "pause_execution" if ctx.request.url.path.endswith("/pause") else "resume_execution"
        await self.dash.op(ctx, name, path={"execution_id": execution_id})
        return redirect(ctx, f"/executions/{execution_id}")

    async def decide(self, ctx: Context) -> Response:
        execution_id = ctx.request.path_params["execution_id"]
        decision = ctx.request.path_params["decision"]
        if decision not in ("approve", "reject"):
            raise NotFound(ctx.request.url.path, f"No action at {ctx.request.url.path}")
        comment = form_of(ctx).get("comment", "").strip()
        await self.dash.op(
            ctx,
            "approve_execution" if decision == "approve" else "reject_execution",
            path={"execution_id": execution_id},
            body={"comment": comment} if comment else {},
        )
        back = form_of(ctx).get("back")
        if back == "execution":
            return redirect(ctx, f"/executions/{execution_id}")
        return redirect(ctx, "/approvals")

    # -- approvals ------------------------------------------------------------------------------

    async def approvals(self, ctx: Context) -> Response:
        page = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "list_executions",
                query={
                    "awaiting_approval": "true",
                    "page": _page(ctx),
                    "page_size": str(PAGE_SIZE),
                },
            ),
        )
        waiting = []
        for item in page["items"]:
            try:
                details = await self.engine.executions.details(item["execution_id"])
            except ExecutionNotFound:  # pruned since the page was read
                continue
            if details.approval:
                created = details.execution.created_at
                waiting.append({**item, "parameters": details.parameters, "created_at": created})
        return self.render(ctx, "approvals.html", page=page, waiting=waiting)

    # -- schedules ------------------------------------------------------------------------------

    async def schedules(self, ctx: Context) -> Response:
        filters = _pick(ctx, "enabled", "workflow_id")
        page = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "list_schedules",
                query={**filters, "page": _page(ctx), "page_size": str(PAGE_SIZE)},
            ),
        )
        return self.render(ctx, "schedules.html", page=page, filters=filters)

    async def schedule(self, ctx: Context) -> Response:
        schedule_id = ctx.request.path_params["schedule_id"]
        schedule = await self.dash.op(ctx, "get_schedule", path={"schedule_id": schedule_id})
        history = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "schedule_history",
                path={"schedule_id": schedule_id},
                query={"page": _page(ctx), "page_size": str(PAGE_SIZE)},
            ),
        )
        upcoming = await self.dash.op(
            ctx, "preview_schedule", path={"schedule_id": schedule_id}, query={"count": "5"}
        )
        return self.render(
            ctx, "schedule.html", schedule=schedule, history=history, upcoming=upcoming["items"]
        )

    async def toggle_schedule(self, ctx: Context) -> Response:
        schedule_id = ctx.request.path_params["schedule_id"]
        state = ctx.request.path_params["state"]
        if state not in ("enable", "disable"):
            raise NotFound(ctx.request.url.path, f"No action at {ctx.request.url.path}")
        enabled = state == "enable"
        await self.dash.op(
            ctx, "update_schedule", path={"schedule_id": schedule_id}, body={"enabled": enabled}
        )
        if form_of(ctx).get("back") == "list":
            return redirect(ctx, "/schedules")
        return redirect(ctx, f"/schedules/{schedule_id}")

    # -- webhooks -------------------------------------------------------------------------------

    async def webhooks(self, ctx: Context) -> Response:
        page = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "list_webhooks",
                query={"page": _page(ctx), "page_size": str(PAGE_SIZE)},
            ),
        )
        return self.render(ctx, "webhooks.html", page=page)

    async def webhook(self, ctx: Context) -> Response:
        webhook_id = ctx.request.path_params["webhook_id"]
        hook = await self.dash.op(ctx, "get_webhook", path={"webhook_id": webhook_id})
        deliveries = _paged(
            ctx,
            await self.dash.op(
                ctx,
                "list_webhook_deliveries",
                path={"webhook_id": webhook_id},
                query={"page": _page(ctx), "page_size": str(PAGE_SIZE)},
            ),
        )
        return self.render(ctx, "webhook.html", hook=hook, deliveries=deliveries)

    async def redeliver(self, ctx: Context) -> Response:
        webhook_id = ctx.request.path_params["webhook_id"]
        delivery_id = ctx.request.path_params["delivery_id"]
        await self.dash.op(
            ctx,
            "redeliver_webhook_delivery",
            path={"webhook_id": webhook_id, "delivery_id": delivery_id},
        )
        return redirect(ctx, f"/webhooks/{webhook_id}")


# -- the run form ---------------------------------------------------------------------------------

_INPUT = {"integer": "number", "number": "number", "string": "text", "boolean": "checkbox"}


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Form fields for the top-level properties of a parameters schema with a simple type."""
    required = set(schema.get("required") or ())
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        kind = prop.get("type")
        kind = kind if isinstance(kind, str) and kind in _INPUT else "json"
        fields.append(
            {
                "name": name,
                "kind": kind,
                "input": _INPUT.get(kind, "json"),
                "required": name in required,
                "description": prop.get("description") or "",
                "enum": prop.get("enum") if isinstance(prop.get("enum"), list) else None,
                "default": prop.get("default"),
            }
        )
    return fields


def _parameters(form: dict[str, str], schema: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a run form: the JSON field, then each schema field over it."""
    raw = form.get("parameters_json", "").strip() or "{}"
    parameters = _json(raw, "Parameters (JSON)", "parameters")
    if not isinstance(parameters, dict):
        raise InvalidRequest("Parameters (JSON) must be an object", {"field": "parameters"})
    for field in _fields(schema):
        key = f"param.{field['name']}"
        if field["kind"] == "boolean":
            if f"{key}.present" in form:
                parameters[field["name"]] = key in form
            continue
        value = form.get(key, "")
        if value == "":
            continue
        parameters[field["name"]] = _typed(field, value)
    return parameters


def _typed(field: dict[str, Any], value: str) -> Any:
    kind = field["kind"]
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "json":
            return _json(value, f"Parameter '{field['name']}'", f"parameters.{field['name']}")
    except ValueError:
        raise InvalidRequest(
            f"Parameter '{field['name']}' must be {'an' if kind == 'integer' else 'a'} {kind}",
            {"field": f"parameters.{field['name']}"},
        ) from None
    return value


def _json(text: str, label: str, field: str) -> Any:
    """``text`` parsed with the checks of an ``/api/v1`` request body (nesting depth,
    ``NaN`` and infinities, lone surrogates); :class:`InvalidRequest` naming ``field``."""
    try:
        return parse_json_body(text.encode("utf-8", "surrogatepass"))
    except InvalidRequest as exc:
        message = exc.message.replace("The request body", label, 1)
        raise InvalidRequest(message, {"field": field}) from None


def _rfc3339(value: str) -> str:
    """A ``datetime-local`` value (taken as UTC) as RFC 3339; other text as given."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_time(moment)

"""The ``integration`` workflow type: keep a target system in step with a source.

Steps: ``read_source`` (the source's records, or ``parameters.records``;
incrementally, only those changed since the last successful run),
``read_target`` (the target's records), ``plan`` (map the source records
and compare both sides by key: creates, updates, deletes; see
:mod:`abi_plugin_integration.plan`) and ``apply`` (send the operations; its
result, with the counts and per-record errors, is the execution's result).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import attrs
from abi_plugin_data_processing import (
    MAX_REPORTED,
    Listing,
    MappingOptions,
    Pagination,
    Progress,
    RecordMapper,
    Remote,
    RemoteError,
    RetryOptions,
    SourceOptions,
    check_integration,
    check_max_pages,
    check_pagination,
    check_params,
    check_path,
    check_remote_path,
    check_run_parameters,
    check_source,
    config_error,
    connect,
    read_records,
    retry_policy,
)

from abi_engine import StepContext, StepSpec, WorkflowType
from abi_engine.errors import ParameterValidationError
from abi_plugin_integration.plan import Plan, TooManyDeletes, plan_sync

__all__ = ["IntegrationSync", "SyncConfig", "SyncParams"]

OPERATIONS = ("create", "update", "delete")
#: How many pages of completed runs (100 each) incremental looks through for one that
#: synchronized; beyond them it reads everything.
MAX_SINCE_PAGES = 10


@attrs.define(kw_only=True)
class SyncConfig(SourceOptions, MappingOptions):
    """The configuration of an ``integration`` workflow (see docs/integration-sync.md)."""

    target_integration: str
    key: str = "id"
    mode: Literal["upsert", "mirror"] = "upsert"
    compare_fields: list[str] | None = None
    target_path: str = "/records"
    target_record_path: str = "/records/{key}"
    target_params: dict[str, Any] = attrs.Factory(dict)
    target_records_field: str | None = "records"
    target_pagination: Pagination | None = None
    target_max_pages: int = 100
    update_method: Literal["PUT", "PATCH"] = "PUT"
    max_deletes: int | None = None
    incremental: bool = False
    since_param: str = "since"
    retry: RetryOptions = attrs.Factory(RetryOptions)


@attrs.define(kw_only=True)
class SyncParams:
    """``records`` instead of the source; ``since``; ``source_params``; ``dry_run``."""

    records: list[Any] | None = None
    source_params: dict[str, Any] = attrs.Factory(dict)
    since: str | None = None
    dry_run: bool = False


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


class IntegrationSync(WorkflowType):
    """Synchronizes records from a source integration to a target integration by key."""

    name = "integration"
    description = "Synchronizes data between systems"
    docs_url = "docs/integration-sync.md"
    Configuration = SyncConfig
    Parameters = SyncParams

    def __init__(self) -> None:
        # Kept durably every 50 operations or second, and at most every tenth of the
        # operations done so far (each save writes the whole record): a crash resends
        # at most those (with their idempotency keys), not the whole step.
        self.progress = Progress(every=50, interval_seconds=1.0, growth=0.1)

    def check_configuration(self, config: SyncConfig) -> None:
        check_source(config)
        RecordMapper(config)
        check_integration(config.target_integration, "configuration.target_integration")
        check_path(config.key, "configuration.key")
        for index, path in enumerate(config.compare_fields or []):
            check_path(path, f"configuration.compare_fields[{index}]")
        check_remote_path(config.target_path, "configuration.target_path")
        check_remote_path(
            config.target_record_path, "configuration.target_record_path", placeholder=True
        )
        if config.target_records_field is not None:
            check_path(config.target_records_field, "configuration.target_records_field")
        check_params(config.target_params, "configuration.target_params")
        check_pagination(config.target_pagination, "configuration.target_pagination")
        check_max_pages(config.target_max_pages, "configuration.target_max_pages")
        if config.max_deletes is not None and config.max_deletes < 0:
            raise config_error("configuration.max_deletes", "must not be negative")
        if config.incremental and config.mode == "mirror":
            raise config_error(
                "configuration.incremental",
                "a mirror needs every source record to find deletes; use mode 'upsert'",
            )
        if not config.since_param or len(config.since_param) > 100:
            raise config_error("configuration.since_param", "expected a query parameter name")
        retry_policy(config.retry)

    def check_parameters(self, params: SyncParams, config: SyncConfig) -> None:
        check_run_parameters(params.records, params.source_params, config.source_integration)
        if params.since is not None:
            if _parse_time(params.since) is None:
                raise ParameterValidationError(
                    "'parameters.since' must be an RFC 3339 time with a zone",
                    {"field": "parameters.since"},
                )
            if config.mode == "mirror":
                raise ParameterValidationError(
                    "A mirror reads the whole source; 'since' would delete what did not change",
                    {"field": "parameters.since"},
                )

    def steps(self, config: SyncConfig) -> list[StepSpec]:
        retry = retry_policy(config.retry)
        return [
            StepSpec(name="read_source", fn=self._read_source, retry=retry),
            StepSpec(name="read_target", fn=self._read_target, retry=retry),
            StepSpec(name="plan", fn=self._plan),
            StepSpec(name="apply", fn=self._apply, retry=retry),
        ]

    # -- steps ---------------------------------------------------------------------

    async def _since(self, ctx: StepContext) -> str | None:
        """``parameters.since``, or with ``incremental`` the start of the last completed run."""
        params: SyncParams = ctx.params
        if params.since is not None:
            return params.since
        if not ctx.config.incremental:
            return None
        host = ctx.host
        if host is None:
            raise RuntimeError("an incremental sync reads earlier runs: run it in an engine")
        # The last completed run that read the source and wrote everything it read: a dry
        # run, or a run on parameters.records, synchronized nothing from the source, and a
        # run with refused or failed records left them behind (reading again from before
        # it retries them; records already in sync come out unchanged).
        for number in range(1, MAX_SINCE_PAGES + 1):
            page = await host.list_executions(
                workflow_id=ctx.workflow_id, status="completed", page=number, page_size=100
            )
            for summary in page.items:
                run = await host.get_execution(summary.execution_id)
                if run.parameters.get("dry_run") or run.parameters.get("records") is not None:
                    continue
                result = run.result if isinstance(run.result, dict) else {}
                if result.get("failed") or result.get("rejected"):
                    continue
                return None if run.started_at is None else _rfc3339(run.started_at)
            if number >= page.pagination.total_pages:
                break
        return None

    async def _read_source(self, ctx: StepContext) -> dict[str, Any]:
        config: SyncConfig = ctx.config
        params: SyncParams = ctx.params
        since = await self._since(ctx) if params.records is None else None
        extra = dict(params.source_params)
        if since is not None:
            extra[config.since_param] = since
        read = await read_records(ctx, config, params.records, extra)
        return {**read, "since": since}

    async def _read_target(self, ctx: StepContext) -> dict[str, Any]:
        config: SyncConfig = ctx.config
        listing = Listing(
            path=config.target_path,
            params=config.target_params,
            records_field=config.target_records_field,
            pagination=config.target_pagination,
            max_pages=config.target_max_pages,
        )
        async with await connect(
            ctx, config.target_integration, "configuration.target_integration"
        ) as remote:
            records, pages = await listing.fetch(remote)
        return {"pages": pages, "records": records}

    async def _plan(self, ctx: StepContext) -> dict[str, Any]:
        config: SyncConfig = ctx.config
        mapper = RecordMapper(config)
        records = ctx.results["read_source"]["records"]
        mapped: list[tuple[int, dict[str, Any]]] = []
        rejected: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            out, reason = mapper.map(record)
            if out is None:
                rejected.append({"index": index, "reason": reason})
            else:
                mapped.append((index, out))
        plan: Plan = plan_sync(
            mapped,
            ctx.results["read_target"]["records"],
            key=config.key,
            mirror=config.mode == "mirror",
            compare_fields=config.compare_fields,
            partial_updates=config.update_method == "PATCH",
        )
        rejected.extend(r.json() for r in plan.rejected)
        rejected.sort(key=lambda r: r["index"])
        if config.max_deletes is not None and len(plan.deletes) > config.max_deletes:
            raise TooManyDeletes(
                f"the sync would delete {len(plan.deletes)} records, more than max_deletes"
                f" ({config.max_deletes}); nothing was changed"
            )
        return {
            "read": len(records),
            "creates": [[k, body] for k, body in plan.creates],
            "updates": [[k, body] for k, body in plan.updates],
            "deletes": plan.deletes,
            "unchanged": plan.unchanged,
            "rejected": len(rejected),
            "rejections": rejected[:MAX_REPORTED],
        }

    async def _apply(self, ctx: StepContext) -> dict[str, Any]:
        config: SyncConfig = ctx.config
        plan = ctx.results["plan"]
        operations: list[tuple[str, str, Any]] = [
            *(("create", k, body) for k, body in plan["creates"]),
            *(("update", k, body) for k, body in plan["updates"]),
            *(("delete", k, None) for k in plan["deletes"]),
        ]
        done: dict[Any, Any] = {}
        if not ctx.params.dry_run and operations:
            try:
                done = await self._send_all(ctx, config, operations)
            except BaseException:
                if ctx.attempt >= config.retry.attempts:
                    self.progress.forget(ctx)
                raise
        return self._summary(ctx, config, plan, operations, done)

    async def _send_all(
        self, ctx: StepContext, config: SyncConfig, operations: list[tuple[str, str, Any]]
    ) -> dict[Any, Any]:
        done = self.progress.done(ctx)
        async with await connect(
            ctx, config.target_integration, "configuration.target_integration"
        ) as remote:
            for operation, key, body in operations:
                if (operation, key) not in done:
                    sent = await self._send(ctx, remote, config, operation, key, body)
                    await self.progress.record(ctx, (operation, key), sent)
        result = dict(done)
        self.progress.forget(ctx)
        return result

    async def _send(
        self,
        ctx: StepContext,
        remote: Remote,
        config: SyncConfig,
        operation: str,
        key: str,
        body: Any,
    ) -> dict[str, Any] | None:
        """Send one operation; ``None`` when done, the error when the target refused it."""
        quoted = quote(key, safe="")
        headers = {"Idempotency-Key": f"{ctx.execution_id}:{operation}:{quoted}"}
        # The keys '.' and '..' are dot segments, which URLs resolve away (to the
        # collection, or the API's root): encoded, they name the record.
        segment = quoted.replace(".", "%2E") if quoted in (".", "..") else quoted
        one = config.target_record_path.replace("{key}", segment)
        try:
            if operation == "create":
                await remote.request("POST", config.target_path, json_body=body, headers=headers)
            elif operation == "update":
                await remote.request(config.update_method, one, json_body=body, headers=headers)
            else:
                await remote.request("DELETE", one, headers=headers)
        except RemoteError as exc:
            if exc.transient:
                raise
            return {"key": key, "operation": operation, **exc.json()}
        return None

    def _summary(
        self,
        ctx: StepContext,
        config: SyncConfig,
        plan: dict[str, Any],
        operations: list[tuple[str, str, Any]],
        done: dict[Any, Any],
    ) -> dict[str, Any]:
        source = ctx.results["read_source"]
        errors = [e for e in (done.get((op, key)) for op, key, _ in operations) if e]
        counts = dict.fromkeys(OPERATIONS, 0)
        for operation, key, _ in operations:
            if (operation, key) in done and done[(operation, key)] is None:
                counts[operation] += 1
        result: dict[str, Any] = {
            "mode": config.mode,
            "key": config.key,
            "source_integration": source["origin"] if source["origin"] != "parameters" else None,
            "target_integration": config.target_integration,
            "since": source["since"],
            "dry_run": bool(ctx.params.dry_run),
            "source_records": plan["read"],
            "target_records": len(ctx.results["read_target"]["records"]),
            "planned": {
                "create": len(plan["creates"]),
                "update": len(plan["updates"]),
                "delete": len(plan["deletes"]),
            },
            "created": counts["create"],
            "updated": counts["update"],
            "deleted": counts["delete"],
            "unchanged": plan["unchanged"],
            "rejected": plan["rejected"],
            "failed": len(errors),
            "rejections": plan["rejections"],
            "errors": errors[:MAX_REPORTED],
        }
        if ctx.params.dry_run:
            result["plan"] = {
                "create": [k for k, _ in plan["creates"]][:MAX_REPORTED],
                "update": [k for k, _ in plan["updates"]][:MAX_REPORTED],
                "delete": plan["deletes"][:MAX_REPORTED],
            }
        return result

"""The ``data_processing`` workflow type: read, transform, validate, write in batches.

Steps: ``read`` (records from the parameters, or the source integration's
listing, page by page), ``transform`` (the mapping rules and validation of
:mod:`abi_plugin_data_processing.mapping`), ``write`` (the accepted records,
``batch_size`` at a time, to the target integration; split into ``write_1`` ..
``write_N`` with ``write_steps: N``) and ``summarize`` (the counts: the
execution's result). Each step's result is checkpointed, so a restart never
reads or transforms again what a finished step did, and never rewrites the
batches of a finished write step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from abi_engine import StepContext, StepSpec, WorkflowType
from abi_engine.errors import ParameterValidationError
from abi_plugin_data_processing.mapping import (
    MappingOptions,
    RecordMapper,
    check_path,
    config_error,
    set_path,
)
from abi_plugin_data_processing.options import (
    RetryOptions,
    SourceOptions,
    check_integration,
    check_remote_path,
    check_source,
    retry_policy,
)
from abi_plugin_data_processing.remote import Listing, Progress, RemoteError, connect

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_REPORTED",
    "DataProcessing",
    "DataProcessingConfig",
    "DataProcessingParams",
    "check_run_parameters",
    "read_records",
]

MAX_BATCH_SIZE = 10_000
MAX_WRITE_STEPS = 100
#: Rejections and failed batches listed in a result (all are counted).
MAX_REPORTED = 100


@attrs.define(kw_only=True)
class DataProcessingConfig(SourceOptions, MappingOptions):
    """The configuration of a ``data_processing`` workflow (see docs/data-processing.md)."""

    target_integration: str | None = None
    batch_size: int = 100
    target_path: str = "/records"
    target_method: Literal["POST", "PUT", "PATCH"] = "POST"
    target_records_field: str | None = "records"
    on_batch_error: Literal["fail", "continue"] = "fail"
    write_steps: int = 1
    retry: RetryOptions = attrs.Factory(RetryOptions)


@attrs.define(kw_only=True)
class DataProcessingParams:
    """``records`` to process instead of reading the source; ``dry_run``; ``source_params``."""

    records: list[Any] | None = None
    source_params: dict[str, Any] = attrs.Factory(dict)
    dry_run: bool = False


def check_run_parameters(
    records: list[Any] | None, source_params: dict[str, Any], source: str | None
) -> None:
    """Rules shared by the types that read a source: records or a source, scalar params."""
    if records is None and source is None:
        raise ParameterValidationError(
            "Give 'records', or configure 'source_integration' to read them from",
            {"field": "parameters.records"},
        )
    for name, value in source_params.items():
        if not isinstance(value, str | int | float | bool):
            raise ParameterValidationError(
                f"'parameters.source_params.{name}' must be a string, number or boolean",
                {"field": f"parameters.source_params.{name}"},
            )


async def read_records(
    ctx: StepContext, options: SourceOptions, records: list[Any] | None, params: dict[str, Any]
) -> dict[str, Any]:
    """The ``read``/``collect`` step: records from the parameters or the source listing."""
    if records is not None:
        return {"origin": "parameters", "pages": 0, "records": records}
    source = options.source_integration
    assert source is not None  # check_parameters refused this
    listing = Listing(
        path=options.source_path,
        params={**options.source_params, **params},
        records_field=options.records_field,
        pagination=options.pagination,
        max_pages=options.max_pages,
    )
    async with await connect(ctx, source, "configuration.source_integration") as remote:
        found, pages = await listing.fetch(remote)
    return {"origin": source, "pages": pages, "records": found}


def batch_range(batches: int, step_index: int, steps: int) -> range:
    """The batches write step ``step_index`` (of ``steps``) writes: a contiguous share."""
    return range(step_index * batches // steps, (step_index + 1) * batches // steps)


def idempotency_key(execution_id: str, batch: int) -> str:
    """The ``Idempotency-Key`` of a batch: the same for every try and after a restart."""
    return f"{execution_id}:batch:{batch}"


class DataProcessing(WorkflowType):
    """Reads records, maps and validates them, and writes them in batches."""

    name = "data_processing"
    description = "Processes and transforms data"
    docs_url = "docs/data-processing.md"
    Configuration = DataProcessingConfig
    Parameters = DataProcessingParams

    def __init__(self) -> None:
        self.progress = Progress()

    def check_configuration(self, config: DataProcessingConfig) -> None:
        check_source(config)
        RecordMapper(config)
        if config.target_integration is not None:
            check_integration(config.target_integration, "configuration.target_integration")
        if not 1 <= config.batch_size <= MAX_BATCH_SIZE:
            raise config_error(
                "configuration.batch_size", f"must be between 1 and {MAX_BATCH_SIZE}"
            )
        check_remote_path(config.target_path, "configuration.target_path")
        if config.target_records_field is not None:
            check_path(config.target_records_field, "configuration.target_records_field")
        if not 1 <= config.write_steps <= MAX_WRITE_STEPS:
            raise config_error(
                "configuration.write_steps", f"must be between 1 and {MAX_WRITE_STEPS}"
            )
        retry_policy(config.retry)

    def check_parameters(self, params: DataProcessingParams, config: DataProcessingConfig) -> None:
        check_run_parameters(params.records, params.source_params, config.source_integration)

    def steps(self, config: DataProcessingConfig) -> list[StepSpec]:
        mapper = RecordMapper(config)
        retry = retry_policy(config.retry)
        n = config.write_steps
        writes = [
            StepSpec(
                name="write" if n == 1 else f"write_{i + 1}",
                fn=self._writer(config, i),
                retry=retry,
            )
            for i in range(n)
        ]
        return [
            StepSpec(name="read", fn=self._read, retry=retry),
            StepSpec(name="transform", fn=self._transformer(mapper)),
            *writes,
            StepSpec(name="summarize", fn=self._summarize),
        ]

    # -- steps --------------------------------------------------------------------

    async def _read(self, ctx: StepContext) -> dict[str, Any]:
        params: DataProcessingParams = ctx.params
        return await read_records(ctx, ctx.config, params.records, params.source_params)

    def _transformer(self, mapper: RecordMapper) -> Callable[[StepContext], Any]:
        async def transform(ctx: StepContext) -> dict[str, Any]:
            records = ctx.results["read"]["records"]
            mapped, rejected = mapper.map_all(records)
            return {
                "read": len(records),
                "records": mapped,
                "rejected": len(rejected),
                "rejections": [r.json() for r in rejected[:MAX_REPORTED]],
            }

        return transform

    def _writer(self, config: DataProcessingConfig, index: int) -> Callable[[StepContext], Any]:
        async def write(ctx: StepContext) -> dict[str, Any]:
            try:
                return await self._write(ctx, config, index)
            except BaseException:
                if ctx.attempt >= config.retry.attempts:
                    self.progress.forget(ctx)
                raise

        return write

    async def _write(
        self, ctx: StepContext, config: DataProcessingConfig, index: int
    ) -> dict[str, Any]:
        records = ctx.results["transform"]["records"]
        size = config.batch_size
        total = -(-len(records) // size)
        mine = batch_range(total, index, config.write_steps)
        outcome: dict[str, Any] = {"batches": len(mine), "written": 0, "failed": 0}
        outcome["failed_batches"] = []
        if ctx.params.dry_run or config.target_integration is None or not mine:
            return {**outcome, "batches": 0, "skipped": True}
        done = self.progress.done(ctx)
        async with await connect(
            ctx, config.target_integration, "configuration.target_integration"
        ) as remote:
            for batch in mine:
                if batch not in done:
                    chunk = records[batch * size : (batch + 1) * size]
                    sent = await self._send(ctx, remote, config, batch, chunk)
                    await self.progress.record(ctx, batch, sent)
        for batch in mine:
            entry = done[batch]
            if entry["status"] == "written":
                outcome["written"] += entry["records"]
            else:
                outcome["failed"] += entry["records"]
                outcome["failed_batches"].append(entry)
        self.progress.forget(ctx)
        return outcome

    async def _send(
        self,
        ctx: StepContext,
        remote: Any,
        config: DataProcessingConfig,
        batch: int,
        chunk: list[Any],
    ) -> dict[str, Any]:
        body: Any = chunk
        if config.target_records_field is not None:
            body = {}
            set_path(body, config.target_records_field, chunk)
        entry: dict[str, Any] = {"index": batch, "records": len(chunk)}
        try:
            response = await remote.request(
                config.target_method,
                config.target_path,
                json_body=body,
                headers={"Idempotency-Key": idempotency_key(ctx.execution_id, batch)},
            )
        except RemoteError as exc:
            if config.on_batch_error == "fail" or exc.transient:
                raise
            ctx.logger.warning("batch %d refused: %s", batch, exc.message)
            return {**entry, "status": "failed", **exc.json()}
        return {**entry, "status": "written", "status_code": response.status_code}

    async def _summarize(self, ctx: StepContext) -> dict[str, Any]:
        config: DataProcessingConfig = ctx.config
        read, transformed = ctx.results["read"], ctx.results["transform"]
        writes = [
            ctx.results[name]
            for name in sorted(ctx.results)
            if name == "write" or name.startswith("write_")
        ]
        failed_batches = sorted(
            (b for w in writes for b in w["failed_batches"]), key=lambda b: b["index"]
        )
        written_batches = sum(w["batches"] for w in writes) - len(failed_batches)
        records = transformed["records"]
        writing = not ctx.params.dry_run and config.target_integration is not None
        result: dict[str, Any] = {
            "source_integration": read["origin"] if read["origin"] != "parameters" else None,
            "target_integration": config.target_integration,
            "dry_run": bool(ctx.params.dry_run),
            "read": transformed["read"],
            "transformed": len(records),
            "rejected": transformed["rejected"],
            "written": sum(w["written"] for w in writes),
            "failed": sum(w["failed"] for w in writes),
            "pages": read["pages"],
            "batches": {
                "size": config.batch_size,
                "total": -(-len(records) // config.batch_size) if writing else 0,
                "written": written_batches,
                "failed": len(failed_batches),
            },
            "rejections": transformed["rejections"],
            "failed_batches": failed_batches[:MAX_REPORTED],
        }
        if not writing:
            result["records"] = records
        return result

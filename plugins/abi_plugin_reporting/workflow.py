"""The ``reporting`` workflow type: collect records, aggregate, render, deliver.

Steps: ``collect`` (records from the parameters or a source integration's
listing), ``aggregate`` (filters, groups and metrics; see
:mod:`abi_plugin_reporting.aggregate`), ``render`` (the report as JSON, CSV,
Markdown or HTML) and ``deliver`` (sends it to a destination integration;
skipped without one). The last step's result is the execution's result: the
rendered report, its rows and totals, and the counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import attrs
from abi_plugin_data_processing import (
    Expression,
    ExpressionError,
    RetryOptions,
    SourceOptions,
    check_integration,
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
from abi_plugin_reporting.aggregate import Metric, aggregate
from abi_plugin_reporting.render import CONTENT_TYPES, columns_of, render

__all__ = ["Reporting", "ReportingConfig", "ReportingParams"]

MAX_METRICS = 50
MAX_FILTERS = 50
MAX_GROUP_BY = 10


def _default_metrics() -> list[Metric]:
    return [Metric(name="count", aggregation="count")]


@attrs.define(kw_only=True)
class ReportingConfig(SourceOptions):
    """The configuration of a ``reporting`` workflow (see docs/reporting.md)."""

    report_type: str = "summary"
    title: str | None = None
    metrics: list[Metric] = attrs.Factory(_default_metrics)
    group_by: list[str] = attrs.Factory(list)
    filters: list[str] = attrs.Factory(list)
    sort_by: str | None = None
    sort_order: Literal["asc", "desc"] = "asc"
    limit: int | None = None
    format: Literal["json", "csv", "markdown", "html"] = "json"
    destination_integration: str | None = None
    destination_path: str = "/reports"
    destination_method: Literal["POST", "PUT"] = "POST"
    retry: RetryOptions = attrs.Factory(RetryOptions)


@attrs.define(kw_only=True)
class ReportingParams:
    """``records`` instead of the source; ``source_params``; extra ``filters``."""

    records: list[Any] | None = None
    source_params: dict[str, Any] = attrs.Factory(dict)
    filters: list[str] = attrs.Factory(list)


def _compile_filters(filters: list[str], field: str, error: Any) -> list[Expression]:
    compiled = []
    for index, source in enumerate(filters):
        try:
            compiled.append(Expression(source))
        except ExpressionError as exc:
            raise error(f"{field}[{index}]", str(exc)) from None
    return compiled


def _param_error(field: str, message: str) -> ParameterValidationError:
    return ParameterValidationError(f"Invalid value for '{field}': {message}", {"field": field})


def _no_destination(configuration: Any, parameters: Any) -> bool:
    return not configuration.get("destination_integration")


class Reporting(WorkflowType):
    """Aggregates records from an integration (or the parameters) into a rendered report."""

    name = "reporting"
    description = "Generates reports"
    docs_url = "docs/reporting.md"
    Configuration = ReportingConfig
    Parameters = ReportingParams

    def check_configuration(self, config: ReportingConfig) -> None:
        check_source(config)
        if not config.report_type.strip() or len(config.report_type) > 100:
            raise config_error("configuration.report_type", "expected 1 to 100 characters")
        if config.title is not None and len(config.title) > 500:
            raise config_error("configuration.title", "at most 500 characters")
        if len(config.group_by) > MAX_GROUP_BY:
            raise config_error("configuration.group_by", f"at most {MAX_GROUP_BY} fields")
        for index, path in enumerate(config.group_by):
            check_path(path, f"configuration.group_by[{index}]")
        self._check_metrics(config)
        if len(config.filters) > MAX_FILTERS:
            raise config_error("configuration.filters", f"at most {MAX_FILTERS} filters")
        _compile_filters(config.filters, "configuration.filters", config_error)
        columns = columns_of(config.group_by, [m.name for m in config.metrics])
        if config.sort_by is not None and config.sort_by not in columns:
            raise config_error(
                "configuration.sort_by",
                "must be a group_by field or a metric name",
                allowed=columns,
            )
        if config.limit is not None and config.limit < 1:
            raise config_error("configuration.limit", "must be at least 1")
        if config.destination_integration is not None:
            check_integration(
                config.destination_integration, "configuration.destination_integration"
            )
        check_remote_path(config.destination_path, "configuration.destination_path")
        retry_policy(config.retry)

    @staticmethod
    def _check_metrics(config: ReportingConfig) -> None:
        if not config.metrics or len(config.metrics) > MAX_METRICS:
            raise config_error("configuration.metrics", f"expected 1 to {MAX_METRICS} metrics")
        names = set(config.group_by)
        for index, metric in enumerate(config.metrics):
            where = f"configuration.metrics[{index}]"
            if not metric.name.strip() or len(metric.name) > 100:
                raise config_error(f"{where}.name", "expected 1 to 100 characters")
            if metric.name in names:
                raise config_error(f"{where}.name", f"the column {metric.name!r} exists already")
            names.add(metric.name)
            if metric.aggregation == "count":
                if metric.field is not None:
                    check_path(metric.field, f"{where}.field")
            elif metric.field is None:
                raise config_error(f"{where}.field", f"'{metric.aggregation}' needs a field")
            else:
                check_path(metric.field, f"{where}.field")

    def check_parameters(self, params: ReportingParams, config: ReportingConfig) -> None:
        check_run_parameters(params.records, params.source_params, config.source_integration)
        if len(params.filters) > MAX_FILTERS:
            raise _param_error("parameters.filters", f"at most {MAX_FILTERS} filters")
        _compile_filters(params.filters, "parameters.filters", _param_error)

    def steps(self, config: ReportingConfig) -> list[StepSpec]:
        retry = retry_policy(config.retry)
        return [
            StepSpec(name="collect", fn=self._collect, retry=retry),
            StepSpec(name="aggregate", fn=self._aggregate),
            StepSpec(name="render", fn=self._render),
            StepSpec(name="deliver", fn=self._deliver, retry=retry, skip_if=_no_destination),
        ]

    # -- steps ---------------------------------------------------------------------

    async def _collect(self, ctx: StepContext) -> dict[str, Any]:
        params: ReportingParams = ctx.params
        return await read_records(ctx, ctx.config, params.records, params.source_params)

    async def _aggregate(self, ctx: StepContext) -> dict[str, Any]:
        config: ReportingConfig = ctx.config
        params: ReportingParams = ctx.params
        records = ctx.results["collect"]["records"]
        filters = [Expression(f) for f in [*config.filters, *params.filters]]
        found = aggregate(
            records,
            metrics=config.metrics,
            group_by=config.group_by,
            filters=filters,
            sort_by=config.sort_by,
            descending=config.sort_order == "desc",
            limit=config.limit,
        )
        return {
            "rows": found.rows,
            "totals": found.totals,
            "summary": {
                "records": len(records),
                "matched": found.matched,
                "filtered_out": found.filtered_out,
                "invalid": found.invalid,
                "filter_errors": found.filter_errors,
                "groups": found.groups,
                "rows": len(found.rows),
                "pages": ctx.results["collect"]["pages"],
            },
        }

    async def _render(self, ctx: StepContext) -> dict[str, Any]:
        config: ReportingConfig = ctx.config
        aggregates = ctx.results["aggregate"]
        report = {
            "title": config.title or config.report_type.replace("_", " ").title(),
            "report_type": config.report_type,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "summary": aggregates["summary"],
            "group_by": config.group_by,
            "metrics": [attrs.asdict(m) for m in config.metrics],
            "columns": columns_of(config.group_by, [m.name for m in config.metrics]),
            "rows": aggregates["rows"],
            "totals": aggregates["totals"],
        }
        return {
            **report,
            "format": config.format,
            "content_type": CONTENT_TYPES[config.format],
            "content": render(report, config.format),
        }

    async def _deliver(self, ctx: StepContext) -> dict[str, Any]:
        config: ReportingConfig = ctx.config
        rendered = ctx.results["render"]
        destination = config.destination_integration
        assert destination is not None  # skip_if skips the step otherwise
        async with await connect(
            ctx, destination, "configuration.destination_integration"
        ) as remote:
            response = await remote.request(
                config.destination_method,
                config.destination_path,
                content=rendered["content"],
                headers={
                    "Content-Type": rendered["content_type"],
                    "Idempotency-Key": f"{ctx.execution_id}:report",
                },
            )
        delivery = {
            "integration": destination,
            "path": config.destination_path,
            "status_code": response.status_code,
        }
        return {**rendered, "delivery": delivery}

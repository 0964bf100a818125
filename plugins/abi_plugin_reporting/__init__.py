"""The ``reporting`` workflow type: aggregates records into a rendered report.

Collects records (from the parameters or a source integration's listing),
filters them with safe expressions, groups them and computes metrics
(count, sum, avg, min, max, count_distinct), renders the report as JSON,
CSV, Markdown or HTML, and optionally delivers it to an integration; see
``docs/reporting.md``. Registered through the ``abi_engine`` entry point and
the public hooks only, exactly as a third-party workflow type would be.
"""

from __future__ import annotations

from collections.abc import Callable

from abi_engine import WorkflowType, hookimpl
from abi_plugin_reporting.aggregate import AGGREGATIONS, Aggregates, Metric, aggregate, order_key
from abi_plugin_reporting.render import CONTENT_TYPES, render
from abi_plugin_reporting.workflow import Reporting, ReportingConfig, ReportingParams

__all__ = [
    "AGGREGATIONS",
    "CONTENT_TYPES",
    "Aggregates",
    "Metric",
    "Reporting",
    "ReportingConfig",
    "ReportingParams",
    "aggregate",
    "order_key",
    "render",
]


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(Reporting)

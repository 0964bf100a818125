"""The ``data_processing`` workflow type, and the record tools the data types share.

``data_processing`` reads records (from the parameters or a source
integration's listing, page by page), renames and maps their fields,
validates them, and writes the accepted ones in batches to a target
integration; see ``docs/data-processing.md``.

The names below are public: the ``integration`` and ``reporting`` types
build on them (mapping rules, safe expressions, reading listings, talking to
an integration). Registered through the ``abi_engine`` entry point and the
public hooks only, exactly as a third-party workflow type would be.
"""

from __future__ import annotations

from collections.abc import Callable

from abi_engine import WorkflowType, hookimpl
from abi_plugin_data_processing.expressions import FUNCTIONS, Expression, ExpressionError
from abi_plugin_data_processing.mapping import (
    NO_DEFAULT,
    FieldMapping,
    MappingOptions,
    RecordMapper,
    Rejection,
    ValidationRule,
    check_path,
    config_error,
    get_path,
    set_path,
)
from abi_plugin_data_processing.options import (
    Pagination,
    RetryOptions,
    SourceOptions,
    check_integration,
    check_max_pages,
    check_pagination,
    check_params,
    check_remote_path,
    check_source,
    retry_policy,
)
from abi_plugin_data_processing.remote import (
    IntegrationUnavailable,
    Listing,
    Progress,
    Remote,
    RemoteError,
    connect,
)
from abi_plugin_data_processing.workflow import (
    MAX_REPORTED,
    DataProcessing,
    DataProcessingConfig,
    DataProcessingParams,
    check_run_parameters,
    read_records,
)

__all__ = [
    "FUNCTIONS",
    "MAX_REPORTED",
    "NO_DEFAULT",
    "DataProcessing",
    "DataProcessingConfig",
    "DataProcessingParams",
    "Expression",
    "ExpressionError",
    "FieldMapping",
    "IntegrationUnavailable",
    "Listing",
    "MappingOptions",
    "Pagination",
    "Progress",
    "RecordMapper",
    "Rejection",
    "Remote",
    "RemoteError",
    "RetryOptions",
    "SourceOptions",
    "ValidationRule",
    "check_integration",
    "check_max_pages",
    "check_pagination",
    "check_params",
    "check_path",
    "check_remote_path",
    "check_run_parameters",
    "check_source",
    "config_error",
    "connect",
    "get_path",
    "read_records",
    "retry_policy",
    "set_path",
]


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(DataProcessing)

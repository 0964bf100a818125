"""Every error abi-engine raises, each knowing its API code and HTTP status.

One class per error code of the seed's error table and the contract. Every
layer raises these; the REST adapter and the remote Python API only render or
rebuild them, so a caller sees the same exception in-process and over HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AbiError",
    "BackfillNotFound",
    "EngineNotRunning",
    "ExecutionNotFound",
    "ExecutionTimeout",
    "Forbidden",
    "IntegrationMissing",
    "IntegrationNotFound",
    "InternalError",
    "InvalidParameters",
    "InvalidRequest",
    "InvalidSchedule",
    "InvalidState",
    "InvalidWorkflowConfig",
    "MethodNotAllowed",
    "NotFound",
    "ParameterValidationError",
    "PayloadTooLarge",
    "QueueFull",
    "RateLimitExceeded",
    "ScheduleNotFound",
    "TemplateNotFound",
    "TokenNotFound",
    "TriggerNotFound",
    "Unauthorized",
    "WebhookNotFound",
    "WorkflowExecutionError",
    "WorkflowNotFound",
    "error_for_code",
]


class AbiError(Exception):
    """Base of every abi-engine error.

    :ivar code: the API error code, e.g. ``WORKFLOW_NOT_FOUND``.
    :ivar http_status: the HTTP status the REST API answers with.
    :ivar message: a human-readable message.
    :ivar details: a JSON-able mapping with machine-readable specifics.
    """

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, details={self.details!r})"

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the contract's error envelope."""
        return {"code": self.code, "message": self.message, "details": self.details}


class _NotFoundError(AbiError, LookupError):
    resource: ClassVar[str] = "Resource"
    id_field: ClassVar[str] = "id"

    def __init__(self, resource_id: str | None = None, message: str | None = None) -> None:
        details = {self.id_field: resource_id} if resource_id is not None else {}
        msg = message or (
            f"{self.resource} {resource_id!r} not found"
            if resource_id is not None
            else f"{self.resource} not found"
        )
        super().__init__(msg, details)


class InvalidRequest(AbiError, ValueError):
    """The request is malformed: bad JSON, wrong types, unknown fields."""

    code = "INVALID_REQUEST"
    http_status = 400
    default_message = "Invalid request"


class InvalidWorkflowConfig(AbiError, ValueError):
    """A workflow's type or configuration is invalid."""

    code = "INVALID_WORKFLOW_CONFIG"
    http_status = 400
    default_message = "Invalid workflow configuration"


class InvalidParameters(AbiError, ValueError):
    """Execution parameters have the wrong shape (missing, unknown, wrong type)."""

    code = "INVALID_PARAMETERS"
    http_status = 400
    default_message = "Invalid workflow parameters"


class InvalidSchedule(AbiError, ValueError):
    """A schedule's definition is invalid."""

    code = "INVALID_SCHEDULE"
    http_status = 400
    default_message = "Invalid schedule configuration"


class Unauthorized(AbiError, PermissionError):
    """No access token, or an unknown one."""

    code = "UNAUTHORIZED"
    http_status = 401
    default_message = "Missing or invalid access token"


class Forbidden(AbiError, PermissionError):
    """A valid token that lacks the scope the operation needs."""

    code = "FORBIDDEN"
    http_status = 403
    default_message = "The access token lacks the required scope"


class WorkflowNotFound(_NotFoundError):
    """No workflow has this id (or it was deleted)."""

    code = "WORKFLOW_NOT_FOUND"
    http_status = 404
    resource = "Workflow"
    id_field = "workflow_id"


class ExecutionNotFound(_NotFoundError):
    """No execution has this id."""

    code = "EXECUTION_NOT_FOUND"
    http_status = 404
    resource = "Execution"
    id_field = "execution_id"


class ScheduleNotFound(_NotFoundError):
    """No schedule has this id."""

    code = "SCHEDULE_NOT_FOUND"
    http_status = 404
    resource = "Schedule"
    id_field = "schedule_id"


class WebhookNotFound(_NotFoundError):
    """No webhook subscription has this id."""

    code = "WEBHOOK_NOT_FOUND"
    http_status = 404
    resource = "Webhook"
    id_field = "webhook_id"


class IntegrationNotFound(_NotFoundError):
    """No integration connection has this id."""

    code = "NOT_FOUND"
    http_status = 404
    resource = "Integration"
    id_field = "integration_id"


class TokenNotFound(_NotFoundError):
    """No live access token of the caller's user has this id.

    Answered alike for an unknown id and for another user's token, so a caller
    learns nothing about other users' tokens.
    """

    code = "NOT_FOUND"
    http_status = 404
    resource = "Token"
    id_field = "token_id"


class NotFound(_NotFoundError):
    """Unknown route."""

    code = "NOT_FOUND"
    http_status = 404
    resource = "Resource"
    id_field = "path"


class TemplateNotFound(NotFound):
    """No managed notification template has this id (``NOT_FOUND``, like an unknown route,
    of which this is a subclass; the remote Python API rebuilds this class from the
    ``template_id`` of the details)."""

    resource = "Notification template"
    id_field = "template_id"


class TriggerNotFound(NotFound):
    """No inbound trigger has this id (``NOT_FOUND``, like :class:`TemplateNotFound`)."""

    resource = "Trigger"
    id_field = "trigger_id"


class BackfillNotFound(NotFound):
    """No backfill of this schedule has this id (``NOT_FOUND``, like :class:`TriggerNotFound`)."""

    resource = "Backfill"
    id_field = "backfill_id"


class MethodNotAllowed(AbiError):
    """The route exists but not for this HTTP method."""

    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    default_message = "Method not allowed"


class InvalidState(AbiError):
    """The operation does not fit the resource's current state."""

    code = "INVALID_STATE"
    http_status = 409
    default_message = "The resource is not in a state that allows this operation"


class IntegrationMissing(AbiError):
    """A required integration of the workflow is not connected."""

    code = "INTEGRATION_MISSING"
    http_status = 409
    default_message = "Required integration not configured"


class PayloadTooLarge(AbiError):
    """The request body exceeds the configured limit."""

    code = "PAYLOAD_TOO_LARGE"
    http_status = 413
    default_message = "Request body too large"


class ParameterValidationError(AbiError, ValueError):
    """Execution parameters have the right shape but invalid values."""

    code = "PARAMETER_VALIDATION_ERROR"
    http_status = 422
    default_message = "Parameter validation failed"


class RateLimitExceeded(AbiError):
    """Too many requests for this token; retry after ``details['retry_after']`` seconds."""

    code = "RATE_LIMIT_EXCEEDED"
    http_status = 429
    default_message = "Rate limit exceeded"


class QueueFull(AbiError):
    """The execution queue is full; retry later."""

    code = "QUEUE_FULL"
    http_status = 503
    default_message = "The execution queue is full"


class EngineNotRunning(AbiError):
    """The engine was never started (or has stopped): nothing can be executed.

    Beyond the seed's table: a host app that mounts ``abi_asgi.create_app(engine)``
    must run the adapter's lifespan (or ``async with engine:``) so the engine's
    workers run. Answered with 503 and a message saying how.
    """

    code = "ENGINE_NOT_RUNNING"
    http_status = 503
    default_message = "The engine is not running"


class InternalError(AbiError):
    """An unexpected error; details never carry a stack trace."""

    code = "INTERNAL_ERROR"
    http_status = 500
    default_message = "Internal error"


class WorkflowExecutionError(AbiError):
    """A workflow execution failed."""

    code = "WORKFLOW_EXECUTION_ERROR"
    http_status = 500
    default_message = "Error during workflow execution"


class ExecutionTimeout(AbiError, TimeoutError):
    """A synchronous execution did not finish within its timeout."""

    code = "EXECUTION_TIMEOUT"
    http_status = 504
    default_message = "Workflow execution timed out"


_BY_CODE: dict[str, type[AbiError]] = {}
for _cls in list(globals().values()):
    if (
        isinstance(_cls, type)
        and issubclass(_cls, AbiError)
        and _cls is not AbiError
        and not _cls.__name__.startswith("_")
    ):
        _BY_CODE.setdefault(_cls.code, _cls)
_BY_CODE["NOT_FOUND"] = NotFound

# A code several classes answer with (``NOT_FOUND``): the subclass of the code's class
# whose id field the details name (``backfill_id``: BackfillNotFound, still a NotFound).
_BY_ID_FIELD: dict[tuple[str, str], type[AbiError]] = {
    (_cls.code, _cls.id_field): _cls
    for _cls in _NotFoundError.__subclasses__() + NotFound.__subclasses__()
    if _cls is not _BY_CODE[_cls.code] and issubclass(_cls, _BY_CODE[_cls.code])
}


def error_for_code(
    code: str, message: str, details: dict[str, Any] | None = None, http_status: int = 500
) -> AbiError:
    """Rebuild the exception of an error envelope (used by the remote Python API): the
    class of ``code``, or its subclass named by the id field of ``details``."""
    cls = _BY_CODE.get(code)
    for key in details or ():
        cls = _BY_ID_FIELD.get((code, key), cls)
    if cls is None:
        err = AbiError(message, details)
        err.code = code  # type: ignore[misc]
        err.http_status = http_status  # type: ignore[misc]
        return err
    err = cls.__new__(cls)  # cls's own __new__: OSError subclasses refuse Exception.__new__
    AbiError.__init__(err, message, details)
    return err

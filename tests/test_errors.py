"""Errors: one class per API error code, each with the seed's and contract's HTTP status."""

from __future__ import annotations

import json

import pytest

from abi_engine import errors
from abi_engine.errors import AbiError, error_for_code

# The seed's error table plus the contract's additions: code -> HTTP status.
CONTRACT_TABLE: dict[str, int] = {
    "INVALID_WORKFLOW_CONFIG": 400,
    "INVALID_PARAMETERS": 400,
    "INVALID_SCHEDULE": 400,
    "WORKFLOW_NOT_FOUND": 404,
    "EXECUTION_NOT_FOUND": 404,
    "SCHEDULE_NOT_FOUND": 404,
    "INTEGRATION_MISSING": 409,
    "PARAMETER_VALIDATION_ERROR": 422,
    "RATE_LIMIT_EXCEEDED": 429,
    "WORKFLOW_EXECUTION_ERROR": 500,
    "EXECUTION_TIMEOUT": 504,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "WEBHOOK_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "INVALID_STATE": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "INVALID_REQUEST": 400,
}

# Every public class: (code, status). Codes outside the contract are the engine's own.
CLASSES: dict[type[AbiError], tuple[str, int]] = {
    errors.InvalidWorkflowConfig: ("INVALID_WORKFLOW_CONFIG", 400),
    errors.InvalidParameters: ("INVALID_PARAMETERS", 400),
    errors.InvalidSchedule: ("INVALID_SCHEDULE", 400),
    errors.WorkflowNotFound: ("WORKFLOW_NOT_FOUND", 404),
    errors.ExecutionNotFound: ("EXECUTION_NOT_FOUND", 404),
    errors.ScheduleNotFound: ("SCHEDULE_NOT_FOUND", 404),
    errors.IntegrationMissing: ("INTEGRATION_MISSING", 409),
    errors.ParameterValidationError: ("PARAMETER_VALIDATION_ERROR", 422),
    errors.RateLimitExceeded: ("RATE_LIMIT_EXCEEDED", 429),
    errors.WorkflowExecutionError: ("WORKFLOW_EXECUTION_ERROR", 500),
    errors.ExecutionTimeout: ("EXECUTION_TIMEOUT", 504),
    errors.Unauthorized: ("UNAUTHORIZED", 401),
    errors.Forbidden: ("FORBIDDEN", 403),
    errors.WebhookNotFound: ("WEBHOOK_NOT_FOUND", 404),
    errors.NotFound: ("NOT_FOUND", 404),
    errors.IntegrationNotFound: ("NOT_FOUND", 404),
    errors.TokenNotFound: ("NOT_FOUND", 404),
    errors.MethodNotAllowed: ("METHOD_NOT_ALLOWED", 405),
    errors.InvalidState: ("INVALID_STATE", 409),
    errors.PayloadTooLarge: ("PAYLOAD_TOO_LARGE", 413),
    errors.InvalidRequest: ("INVALID_REQUEST", 400),
    errors.QueueFull: ("QUEUE_FULL", 503),
    errors.EngineNotRunning: ("ENGINE_NOT_RUNNING", 503),
    errors.TemplateNotFound: ("NOT_FOUND", 404),
    errors.TriggerNotFound: ("NOT_FOUND", 404),
    errors.BackfillNotFound: ("NOT_FOUND", 404),
    errors.InternalError: ("INTERNAL_ERROR", 500),
}

NOT_FOUND = [c for c in CLASSES if issubclass(c, errors._NotFoundError)]


def _public_classes() -> set[type[AbiError]]:
    found = set()
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, AbiError) and value is not AbiError:
            found.add(value)
    return found


def _instance(cls: type[AbiError]) -> AbiError:
    if cls in NOT_FOUND:
        return cls("x_1")  # type: ignore[call-arg]
    return cls("Something is wrong", {"field": "name"})


def test_every_public_class_is_in_the_table() -> None:
    """Each exception exported by abi_engine.errors has a known code and status here."""
    assert _public_classes() == set(CLASSES)


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_class_code_and_status(cls: type[AbiError]) -> None:
    """Each class carries the code and HTTP status of the seed's table and the contract."""
    code, status = CLASSES[cls]
    assert (cls.code, cls.http_status) == (code, status)
    if code in CONTRACT_TABLE:
        assert CONTRACT_TABLE[code] == status


def test_every_contract_code_has_a_class() -> None:
    """No code of the seed's table or the contract lacks an exception class."""
    assert set(CONTRACT_TABLE) <= {code for code, _ in CLASSES.values()}


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_to_dict_is_the_envelope_error_object(cls: type[AbiError]) -> None:
    """to_dict() gives exactly {code, message, details}, JSON-able."""
    err = _instance(cls)
    data = err.to_dict()
    assert set(data) == {"code", "message", "details"}
    assert data["code"] == cls.code
    assert isinstance(data["message"], str)
    assert data["message"]
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_error_for_code_round_trip(cls: type[AbiError]) -> None:
    """An error's envelope rebuilds the same class, message and details (NOT_FOUND ->
    NotFound, or its subclass whose id field the details name: BackfillNotFound...)."""
    err = _instance(cls)
    data = err.to_dict()
    rebuilt = error_for_code(data["code"], data["message"], data["details"], cls.http_status)
    specific = issubclass(cls, errors.NotFound) and cls.id_field in data["details"]
    expected = errors.NotFound if cls.code == "NOT_FOUND" and not specific else cls
    assert type(rebuilt) is expected
    assert (rebuilt.code, rebuilt.http_status) == (cls.code, cls.http_status)
    assert rebuilt.message == err.message
    assert rebuilt.details == err.details
    assert str(rebuilt) == err.message


def test_error_for_unknown_code_keeps_code_and_status() -> None:
    """An unknown code from a newer server still becomes an AbiError with that code and status."""
    err = error_for_code("SOMETHING_NEW", "new thing", {"a": 1}, 418)
    assert type(err) is AbiError
    assert (err.code, err.http_status, err.message, err.details) == (
        "SOMETHING_NEW",
        418,
        "new thing",
        {"a": 1},
    )
    assert AbiError.code == "INTERNAL_ERROR"  # the class attribute is untouched


@pytest.mark.parametrize("cls", NOT_FOUND, ids=lambda c: c.__name__)
def test_not_found_names_the_id(cls: type[errors._NotFoundError]) -> None:
    """Not-found errors are LookupErrors whose message and details carry the offending id."""
    err = cls("abc_123")
    assert isinstance(err, LookupError)
    assert "abc_123" in err.message
    assert err.details == {cls.id_field: "abc_123"}


def test_builtin_bases() -> None:
    """Errors subclass the fitting builtin so plain except clauses work."""
    assert issubclass(errors.InvalidRequest, ValueError)
    assert issubclass(errors.InvalidWorkflowConfig, ValueError)
    assert issubclass(errors.ParameterValidationError, ValueError)
    assert issubclass(errors.ExecutionTimeout, TimeoutError)
    assert issubclass(errors.Unauthorized, PermissionError)
    assert issubclass(errors.Forbidden, PermissionError)
    assert issubclass(errors.WorkflowNotFound, LookupError)


def test_default_message_and_isolated_details() -> None:
    """Without a message the default is used, and details are copied, not shared."""
    details = {"field": "x"}
    err = errors.InvalidState(details=details)
    details["field"] = "changed"
    assert err.message == errors.InvalidState.default_message
    assert err.details == {"field": "x"}
    assert "InvalidState" in repr(err)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("backfill_id", errors.BackfillNotFound),
        ("trigger_id", errors.TriggerNotFound),
        ("template_id", errors.TemplateNotFound),
        ("path", errors.NotFound),
        ("integration_id", errors.NotFound),  # (not a NotFound subclass: stays NotFound)
    ],
)
def test_not_found_rebuilds_the_class_its_id_field_names(
    field: str, expected: type[AbiError]
) -> None:
    """``NOT_FOUND`` is answered by several classes: the details' id field picks the
    subclass of NotFound, so ``except BackfillNotFound`` works over the remote API too."""
    rebuilt = error_for_code("NOT_FOUND", "gone", {field: "x_1"}, 404)
    assert type(rebuilt) is expected
    assert isinstance(rebuilt, errors.NotFound)
    assert (rebuilt.message, rebuilt.details) == ("gone", {field: "x_1"})

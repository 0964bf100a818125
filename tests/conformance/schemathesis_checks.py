"""What schemathesis may see refused although the OpenAPI document allows it.

The document declares every limit the server checks on its own (lengths,
patterns, bounds, sizes, enums, required fields). A few refusals depend on what
no static document can know: the installed workflow types and the rules of
their configurations, a workflow's parameter rules, the steps of a workflow
(a rerun's ``from_step``), whether a concurrency (rate limit, debounce) key is an expression over
the parameters, whether a cron expression
or a time zone exists, a time already past, the installed integration
providers and their configurations, what the installed types accept in a
notification template's text, a workflow's current type, a trigger mapping's expressions, and a rule JSON
Schema has no keyword for (a workflow's integration ids are unique:
``x-unique-by``), and whether an ``xn--`` label of a URL's host is valid
Punycode. Those, and only
those, may answer a schema-valid request with 400; :func:`semantic_refusals_only`
fails any other 400 (or 413, 422) to a request generated as valid.

Used by ``tests/test_openapi_conformance.py`` and by the command line run
(see ``docs/deployment.md``, *Limits*)::

    SCHEMATHESIS_HOOKS=schemathesis_checks PYTHONPATH=tests/conformance \\
        schemathesis run --config-file tests/conformance/schemathesis.toml \\
        --checks all --max-examples 100 -H "Authorization: Bearer $TOKEN" \\
        http://127.0.0.1:8000/api/v1/openapi.json
"""

from __future__ import annotations

from typing import Any

import schemathesis

__all__ = ["SEMANTIC", "semantic_refusals_only"]

_SCHEDULE_TIMING = frozenset(
    {"cron_expression", "interval_value", "interval_unit", "execution_time", "timezone"}
    | {"end_time"}  # in the future, after start_time (#17)
    # an rrule schedule needs its rule, and a rule must fire again (#17)
    | {"rrule", "exclude_rrule", "start_time"}
)
_URL_FIELDS = frozenset({"url", "callback_url"})
_EXECUTE = {"INVALID_PARAMETERS": None, "PARAMETER_VALIDATION_ERROR": None}

#: (method, path) -> {code: fields it may name (``None``: any)}.
SEMANTIC: dict[tuple[str, str], dict[str, frozenset[str] | None]] = {
    ("POST", "/api/v1/workflows"): {
        "INVALID_WORKFLOW_CONFIG": None,
        # x-unique-by: each id once; whether a key is an expression over the parameters
        "INVALID_REQUEST": frozenset(
            {"integrations", "concurrency.key", "rate_limit.key", "debounce.key"}
        ),
    },
    ("PUT", "/api/v1/workflows/{workflow_id}"): {
        "INVALID_WORKFLOW_CONFIG": None,
        # a workflow's type cannot change; x-unique-by: each integration id once
        "INVALID_REQUEST": frozenset(
            {"type", "integrations", "concurrency.key", "rate_limit.key", "debounce.key"}
        ),
    },
    ("POST", "/api/v1/workflows/{workflow_id}/execute"): dict(_EXECUTE),
    ("POST", "/api/v1/workflows/{workflow_id}/execute_async"): dict(_EXECUTE),
    ("POST", "/api/v1/workflow_executions/{execution_id}/rerun"): {
        **_EXECUTE,
        "INVALID_REQUEST": frozenset({"from_step"}),  # the workflow's own steps
    },
    ("POST", "/api/v1/workflows/{workflow_id}/schedules"): {"INVALID_SCHEDULE": _SCHEDULE_TIMING},
    ("PUT", "/api/v1/workflow_schedules/{schedule_id}"): {"INVALID_SCHEDULE": _SCHEDULE_TIMING},
    # an unsaved schedule, checked as a create is (its workflow_id, if any, must exist)
    ("POST", "/api/v1/workflow_schedules/preview"): {  # (count: the document says 1 to 100)
        "INVALID_SCHEDULE": _SCHEDULE_TIMING,
        "WORKFLOW_NOT_FOUND": None,
        **_EXECUTE,
    },
    ("PUT", "/api/v1/notification_templates/{template_id}"): {
        # the installed workflow types' rules for a template's text (check_template:
        # the notification type's placeholders)
        "INVALID_REQUEST": frozenset({"body", "subject"}),
    },
    ("PUT", "/api/v1/integrations/{integration_id}"): {
        "INVALID_REQUEST": frozenset({"provider", "config"}),  # the providers' own rules
    },
    ("PUT", "/api/v1/triggers/{trigger_id}"): {
        "INVALID_REQUEST": frozenset({"parameters"}),  # the expressions' grammar
    },
}


def _allowed(method: str, path: str, code: str, field: str) -> bool:
    rules = SEMANTIC.get((method.upper(), path), {})
    if code not in rules:
        return False
    fields = rules[code]
    if fields is None:
        return True
    return field in fields or field.split(".", 1)[0].split("[", 1)[0] in fields


@schemathesis.check
def semantic_refusals_only(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request generated as valid is refused only for a rule the document cannot state."""
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 413, 422):
        return None
    try:
        error = response.json()["error"]
    except Exception as exc:
        raise AssertionError(f"not an error envelope: {response.text[:200]}") from exc
    code = str(error.get("code"))
    field = str((error.get("details") or {}).get("field", ""))
    if _allowed(case.operation.method, case.operation.path, code, field):
        return None
    if code == "INVALID_REQUEST" and field in _URL_FIELDS and "IDNA" in str(error.get("message")):
        return None  # an xn-- label must be valid Punycode: no pattern can say so
    raise AssertionError(
        f"A schema-valid request was refused: {response.status_code} {code} on {field!r}:"
        f" {error.get('message')}"
    )

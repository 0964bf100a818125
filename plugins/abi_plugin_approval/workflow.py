"""The ``approval`` workflow type: its configuration, its rules on decisions, its steps.

Steps, in order:

``request_approval``
    Records the request (subject, requester, amount, approvers, when it was
    made and when it expires). Checkpointed, so the deadline never moves.
``notify_approvers``
    POSTs the request as JSON to ``configuration.notify`` (a URL or an
    integration). Skipped without ``notify`` and for auto-approved requests.
``await_decision``
    Waits durably for the decisions: the first arrives as the signal
    ``approval``, the n-th as ``approval:<n>``. Ends at the first rejection,
    once ``required_approvals`` distinct approvers approved, or at expiry.
    Skipped for auto-approved requests.
``record_outcome``
    Builds the execution's result; fails the execution when the request was
    rejected with ``on_reject: fail`` or expired with ``on_expiry: fail``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import httpx

from abi_engine import Host, RetryPolicy, StepContext, WorkflowType, step
from abi_engine.converter import unstructure
from abi_engine.errors import (
    AbiError,
    Forbidden,
    InvalidRequest,
    InvalidState,
    InvalidWorkflowConfig,
    ParameterValidationError,
)
from abi_engine.netguard import check_url
from abi_engine.types import IncomingSignal, SignalTimeout, approval_signal, is_approval_signal

__all__ = [
    "MAX_APPROVERS",
    "MAX_EXPIRY_SECONDS",
    "Approval",
    "ApprovalConfiguration",
    "ApprovalExpired",
    "ApprovalParameters",
    "ApprovalRejected",
    "NotifyConfig",
]

MAX_APPROVERS = 100
#: The longest ``expires_after_seconds`` accepted: a year.
MAX_EXPIRY_SECONDS = 365 * 86_400
MAX_SUBJECT_CHARS = 500
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@attrs.define(kw_only=True)
class NotifyConfig:
    """``configuration.notify``: where the request is POSTed as JSON."""

    url: str | None = None
    integration: str | None = None
    path: str = ""
    headers: dict[str, str] = attrs.Factory(dict)
    timeout_seconds: float = 10.0


@attrs.define(kw_only=True)
class ApprovalConfiguration:
    """An ``approval`` workflow's configuration (see docs/approval.md)."""

    approvers: list[str] = attrs.Factory(list)
    required_approvals: int = 1
    expires_after_seconds: float | None = None
    expires_after_hours: float | None = None
    on_expiry: Literal["reject", "approve", "fail"] = "reject"
    on_reject: Literal["complete", "fail"] = "complete"
    allow_self_approval: bool = False
    auto_approve_max_amount: float | None = None
    notify: NotifyConfig | None = None

    @property
    def expiry_seconds(self) -> float | None:
        """How long a request waits for its decisions, or ``None`` (no expiry)."""
        if self.expires_after_hours is not None:
            return self.expires_after_hours * 3600.0
        return self.expires_after_seconds


@attrs.define(kw_only=True)
class ApprovalParameters:
    """An execution's parameters: what is to be approved."""

    subject: str
    description: str = ""
    requested_by: str | None = None
    amount: float | None = None
    currency: str | None = None
    data: dict[str, Any] = attrs.Factory(dict)


class ApprovalRejected(Exception):
    """The request was rejected and the workflow says ``on_reject: fail``."""


class ApprovalExpired(Exception):
    """Nobody decided in time and the workflow says ``on_expiry: fail``."""


def _bad(field: str, message: str) -> InvalidWorkflowConfig:
    return InvalidWorkflowConfig(
        f"Invalid value for 'configuration.{field}': {message}",
        {"field": f"configuration.{field}"},
    )


def _now() -> str:
    return str(unstructure(datetime.now(UTC)))


def _auto_approved(configuration: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    """Whether the amount is at or under ``auto_approve_max_amount`` (JSON level)."""
    limit = configuration.get("auto_approve_max_amount")
    amount = parameters.get("amount")
    return limit is not None and amount is not None and amount <= limit


def _no_notification(configuration: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    return configuration.get("notify") is None or _auto_approved(configuration, parameters)


def _decision(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "approved": bool(payload.get("approved")),
        "decided_by": payload.get("decided_by"),
        "decided_at": payload.get("decided_at"),
        "comment": payload.get("comment"),
        "data": payload.get("data") or {},
    }


def _tally(decisions: list[dict[str, Any]]) -> tuple[int, int]:
    """(approvals by distinct approvers, rejections); anonymous approvals each count."""
    approvers = {d["decided_by"] for d in decisions if d["approved"] and d["decided_by"]}
    anonymous = sum(1 for d in decisions if d["approved"] and not d["decided_by"])
    return len(approvers) + anonymous, sum(1 for d in decisions if not d["approved"])


class Approval(WorkflowType):
    """Waits for approvers to approve or reject a request, n of m, with an optional expiry."""

    name = "approval"
    description = "Manages approval processes"
    docs_url = "docs/approval.md"
    Configuration = ApprovalConfiguration
    Parameters = ApprovalParameters

    _host: Host | None = None

    def bind(self, host: Host) -> None:
        self._host = host

    @property
    def _allow_private(self) -> bool:
        return self._host is not None and self._host.allow_private_urls

    # -- rules ---------------------------------------------------------------------------------

    def check_configuration(self, config: ApprovalConfiguration) -> None:
        if len(config.approvers) > MAX_APPROVERS:
            raise _bad("approvers", f"at most {MAX_APPROVERS} approvers")
        seen: set[str] = set()
        for index, approver in enumerate(config.approvers):
            if not approver.strip():
                raise _bad(f"approvers[{index}]", "must not be empty")
            if approver in seen:
                raise _bad(f"approvers[{index}]", f"{approver!r} is listed twice")
            seen.add(approver)
        if not 1 <= config.required_approvals <= MAX_APPROVERS:
            raise _bad("required_approvals", f"must be between 1 and {MAX_APPROVERS}")
        if config.approvers and config.required_approvals > len(config.approvers):
            raise _bad(
                "required_approvals",
                f"needs {config.required_approvals} approvals but lists"
                f" {len(config.approvers)} approvers",
            )
        self._check_expiry(config)
        limit = config.auto_approve_max_amount
        if limit is not None and not (math.isfinite(limit) and limit >= 0):
            raise _bad("auto_approve_max_amount", "must be a number of at least 0")
        if config.notify is not None:
            self._check_notify(config.notify)

    def _check_expiry(self, config: ApprovalConfiguration) -> None:
        if config.expires_after_seconds is not None and config.expires_after_hours is not None:
            raise _bad(
                "expires_after_hours",
                "give at most one of 'expires_after_seconds' and 'expires_after_hours'",
            )
        field = "expires_after_hours" if config.expires_after_hours is not None else None
        seconds = config.expiry_seconds
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise _bad(field or "expires_after_seconds", "must be more than 0")
        if seconds is not None and seconds > MAX_EXPIRY_SECONDS:
            raise _bad(field or "expires_after_seconds", "must be at most a year")

    def _check_notify(self, notify: NotifyConfig) -> None:
        if (notify.url is None) == (notify.integration is None):
            raise _bad("notify", "give exactly one of 'url' or 'integration'")
        if notify.url is not None:
            if notify.path:
                raise _bad("notify.path", "'path' goes with 'integration', not 'url'")
            try:
                check_url(notify.url, field="url", allow_private=self._allow_private)
            except AbiError as exc:
                raise _bad("notify.url", exc.message.split(": ", 1)[-1]) from None
        if not 0 < notify.timeout_seconds <= 60:
            raise _bad("notify.timeout_seconds", "must be more than 0 and at most 60")

    def check_parameters(self, params: ApprovalParameters, config: ApprovalConfiguration) -> None:
        if not params.subject.strip() or len(params.subject) > MAX_SUBJECT_CHARS:
            raise ParameterValidationError(
                f"'subject' must be 1 to {MAX_SUBJECT_CHARS} characters",
                {"field": "parameters.subject"},
            )
        if params.amount is not None and not (math.isfinite(params.amount) and params.amount >= 0):
            raise ParameterValidationError(
                "'amount' must be a number of at least 0", {"field": "parameters.amount"}
            )
        if params.currency is not None and not _CURRENCY.match(params.currency):
            raise ParameterValidationError(
                "'currency' must be a three-letter ISO 4217 code such as 'EUR'",
                {"field": "parameters.currency"},
            )

    def check_signal(self, signal: IncomingSignal, config: ApprovalConfiguration) -> None:
        """Refuse decisions from anyone but the approvers, twice from one, or from the requester."""
        if not is_approval_signal(signal.name):
            return
        payload = signal.payload
        if not isinstance(payload, Mapping) or not isinstance(payload.get("approved"), bool):
            raise InvalidRequest(
                "An approval decision is an object with a boolean 'approved'",
                {"field": "payload.approved"},
            )
        decided_by = payload.get("decided_by")
        where = {"execution_id": signal.execution_id, "decided_by": decided_by}
        if signal.sender is not None and decided_by != signal.sender:
            raise Forbidden(
                "A decision is recorded under the caller's own user id: 'decided_by' must be"
                f" {signal.sender!r} (use /approve or /reject)",
                {**where, "field": "decided_by"},
            )
        if config.approvers and decided_by is None:
            raise Forbidden(
                "This request has approvers: a decision must name who decides ('decided_by')",
                {**where, "field": "decided_by"},
            )
        if config.approvers and decided_by not in config.approvers:
            raise Forbidden(
                f"{decided_by!r} is not an approver of this request",
                {**where, "field": "decided_by"},
            )
        # Both who is named as requesting and who started the execution: naming
        # someone else as the requester must not let the starter decide.
        requesters = {signal.parameters.get("requested_by"), signal.created_by} - {None}
        if not config.allow_self_approval and decided_by is not None and decided_by in requesters:
            raise Forbidden(
                f"{decided_by!r} requested this approval and may not decide it",
                {**where, "field": "decided_by"},
            )
        for name, earlier in signal.delivered.items():
            if (
                is_approval_signal(name)
                and "#" not in name
                and decided_by is not None
                and isinstance(earlier, Mapping)
                and earlier.get("decided_by") == decided_by
            ):
                raise InvalidState(f"{decided_by!r} has already decided this request", where)

    # -- steps ---------------------------------------------------------------------------------

    @step
    async def request_approval(self, ctx: StepContext) -> dict[str, Any]:
        config: ApprovalConfiguration = ctx.config
        params: ApprovalParameters = ctx.params
        requested_by = params.requested_by
        if requested_by is None:
            if ctx.host is None:
                raise RuntimeError("the requester of an execution is known only in an engine")
            execution = await ctx.host.get_execution(ctx.execution_id)
            requested_by = execution.created_by
        now = datetime.now(UTC)
        seconds = config.expiry_seconds
        return {
            "subject": params.subject,
            "description": params.description,
            "requested_by": requested_by,
            "amount": params.amount,
            "currency": params.currency,
            "data": params.data,
            "approvers": list(config.approvers),
            "required_approvals": config.required_approvals,
            "requested_at": unstructure(now),
            "expires_at": None
            if seconds is None
            else unstructure(now + timedelta(seconds=seconds)),
            "auto_approved": _auto_approved(ctx.configuration, ctx.parameters),
        }

    @step(retry=RetryPolicy(attempts=3, backoff_seconds=1.0), skip_if=_no_notification)
    async def notify_approvers(self, ctx: StepContext) -> dict[str, Any]:
        notify: NotifyConfig = ctx.config.notify
        request = ctx.results["request_approval"]
        base = f"/api/v1/workflow_executions/{ctx.execution_id}"
        body = {
            "type": "approval.requested",
            "execution_id": ctx.execution_id,
            "workflow_id": ctx.workflow_id,
            **request,
            "approve_path": f"{base}/approve",
            "reject_path": f"{base}/reject",
        }
        client, url = self._notify_target(ctx, notify)
        parts = urlsplit(url)
        async with client:  # its transport checks the URL and pins the address checked
            response = await client.post(
                url, json=body, headers=notify.headers or None, timeout=notify.timeout_seconds
            )
        if response.status_code >= 400:
            raise httpx.HTTPStatusError(
                f"POST {parts.scheme}://{parts.netloc}{parts.path} answered {response.status_code}",
                request=response.request,
                response=response,
            )
        return {
            "notified": f"{parts.scheme}://{parts.netloc}{parts.path}",
            "status_code": response.status_code,
        }

    def _notify_target(self, ctx: StepContext, notify: NotifyConfig) -> tuple[Any, str]:
        """A client and the URL to POST to; an integration's base URL with ``path`` appended."""
        if notify.integration is None:
            if ctx.host is None:
                raise RuntimeError("notify_approvers runs only in an engine")
            url = ctx.host.check_url(notify.url or "", field="notify.url")
            client = ctx.host.http_client()
        else:
            connection = ctx.integrations.get(notify.integration)
            if connection is None:
                raise LookupError(
                    f"integration {notify.integration!r} is not one of this workflow's"
                    " connected integrations (list it in the workflow's integrations)"
                )
            client = ctx.client(notify.integration)  # guarded by the http provider
            base = str(client.base_url).rstrip("/")
            url = f"{base}/{notify.path.lstrip('/')}" if notify.path else base
        return client, url

    @step(skip_if=_auto_approved)
    async def await_decision(self, ctx: StepContext) -> dict[str, Any]:
        """Collect decisions; the step runs again from here each time one arrives."""
        config: ApprovalConfiguration = ctx.config
        expires_at = ctx.results["request_approval"]["expires_at"]
        deadline = None if expires_at is None else datetime.fromisoformat(expires_at)
        decisions: list[dict[str, Any]] = []
        expired = False
        while True:
            name = approval_signal(len(decisions) + 1)
            remaining = None
            if deadline is not None:
                remaining = (deadline - datetime.now(UTC)).total_seconds()
                if remaining <= 0 and name not in ctx.signals:
                    expired = True
                    break
            try:
                payload = ctx.wait_for_signal(name, timeout_seconds=remaining)
            except SignalTimeout:
                expired = True
                break
            decisions.append(_decision(payload))
            approvals, rejections = _tally(decisions)
            if rejections or approvals >= config.required_approvals:
                break
        return {"decisions": decisions, "expired": expired}

    @step
    async def record_outcome(self, ctx: StepContext) -> dict[str, Any]:
        config: ApprovalConfiguration = ctx.config
        request = ctx.results["request_approval"]
        waited = ctx.results.get("await_decision", {"decisions": [], "expired": False})
        decisions = waited["decisions"]
        approvals, rejections = _tally(decisions)
        if request["auto_approved"]:
            approved, outcome, decided_at = True, "auto_approved", request["requested_at"]
        elif waited["expired"]:
            approved, outcome = config.on_expiry == "approve", "expired"
            decided_at = request["expires_at"]
        else:
            approved = rejections == 0
            outcome = "approved" if approved else "rejected"
            decided_at = decisions[-1]["decided_at"] if decisions else _now()
        if outcome == "expired" and config.on_expiry == "fail":
            raise ApprovalExpired(
                f"No decision before {request['expires_at']}: {approvals} of"
                f" {config.required_approvals} approvals"
            )
        if outcome == "rejected" and config.on_reject == "fail":
            last = decisions[-1]
            reason = f": {last['comment']}" if last["comment"] else ""
            raise ApprovalRejected(f"Rejected by {last['decided_by']}{reason}")
        return {
            "approved": approved,
            "outcome": outcome,
            "subject": request["subject"],
            "requested_by": request["requested_by"],
            "amount": request["amount"],
            "currency": request["currency"],
            "data": request["data"],
            "required_approvals": config.required_approvals,
            "approvals": approvals,
            "rejections": rejections,
            "decisions": decisions,
            "requested_at": request["requested_at"],
            "expires_at": request["expires_at"],
            "decided_at": decided_at,
        }

"""Signed inbound triggers (``engine.triggers``): a URL that starts a workflow's execution
when an outside system calls it with a valid signature.

A trigger binds a workflow, a secret, a signature rule
(:mod:`abi_engine.trigger_signing`) and a mapping from the request to the
execution's parameters (safe expressions, :mod:`abi_engine.expressions`).
:meth:`TriggerService.invoke` verifies the signature, maps the body and
starts an asynchronous execution whose idempotency key is made of the trigger
and the delivery id: a replay (the same ``webhook-id``) answers the execution
the first request started, never another, whichever process serves it (the
executions' unique idempotency index decides a race).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import simpleeval

from abi_engine.converter import structure
from abi_engine.errors import InvalidRequest, PayloadTooLarge, TriggerNotFound, Unauthorized
from abi_engine.expressions import SafeEvaluator
from abi_engine.ids import utcnow
from abi_engine.models import Execution, Page
from abi_engine.models_triggers import Trigger, TriggerRequest
from abi_engine.services import Service, check_page
from abi_engine.trigger_signing import SignatureRule, verify
from abi_engine.webhook_signing import SECRET_PREFIX, generate_secret, mask_secret

if TYPE_CHECKING:
    from abi_engine.executions import ExecutionService
    from abi_engine.storage.base import Store

__all__ = ["MAX_TRIGGER_BODY_BYTES", "TRIGGER_ID_PATTERN", "TriggerService"]

#: The largest request body an invocation may carry.
MAX_TRIGGER_BODY_BYTES = 262_144
#: What a trigger id is: 1 to 100 letters, digits, ``_``, ``.``, ``-``.
TRIGGER_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
_ID = re.compile(TRIGGER_ID_PATTERN)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def _check_id(trigger_id: Any) -> str:
    if not isinstance(trigger_id, str) or not _ID.match(trigger_id):
        raise InvalidRequest(
            "Trigger ids are 1 to 100 letters, digits, '_', '.' or '-'", {"field": "id"}
        )
    return trigger_id


def _check_mapping(mapping: Mapping[str, str] | None) -> None:
    """Each parameter name is an identifier and each expression parses (and is short)."""
    for name, expression in (mapping or {}).items():
        field = f"parameters.{name}"
        if not _NAME.match(name):
            raise InvalidRequest("A parameter name is an identifier", {"field": field})
        if not isinstance(expression, str) or not 0 < len(expression) <= 1000:
            raise InvalidRequest("An expression is 1 to 1000 characters", {"field": field})
        try:
            ast.parse(expression, mode="eval")
        except SyntaxError as exc:
            raise InvalidRequest(f"Invalid expression: {exc.msg}", {"field": field}) from None


def masked(trigger: Trigger) -> Trigger:
    """``trigger`` as shown after it was created: its secret masked."""
    secret = trigger.secret
    shown = mask_secret(secret) if secret.startswith(SECRET_PREFIX) else SECRET_PREFIX + "****"
    return attrs.evolve(trigger, secret=shown)


class TriggerService(Service):
    """Triggers by id: put, get, list, delete, and :meth:`invoke`."""

    def __init__(self, store: Store, *, executions: ExecutionService) -> None:
        super().__init__(store)
        self._executions = executions

    async def put(
        self, trigger_id: str, data: Mapping[str, Any] | TriggerRequest, *, actor: str | None = None
    ) -> Trigger:
        """Create or replace trigger ``trigger_id`` (``workflows:write`` over REST).

        Without a ``secret`` a new trigger gets a generated one, shown whole in
        this answer only; an existing one keeps its secret.

        :raises InvalidRequest: a bad id, field or expression.
        :raises WorkflowNotFound: no such workflow.
        """
        _check_id(trigger_id)
        req = data if isinstance(data, TriggerRequest) else structure(data, TriggerRequest)
        _check_mapping(req.parameters)
        await self._executions.compiled(req.workflow_id)  # WorkflowNotFound
        existing = await self._store.get_trigger(trigger_id)
        generated = req.secret is None and existing is None
        secret = req.secret or (existing.secret if existing else generate_secret())
        now = utcnow()
        trigger = Trigger(
            id=trigger_id,
            workflow_id=req.workflow_id,
            secret=secret,
            signature=req.signature,
            parameters=req.parameters,
            description=req.description,
            created_by=existing.created_by if existing else actor,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        await self._store.put_trigger(trigger)
        stored = await self._store.get_trigger(trigger_id) or trigger
        return stored if generated else masked(stored)

    async def get(self, trigger_id: str) -> Trigger:
        """The trigger (secret masked); :class:`TriggerNotFound` when there is none."""
        found = await self._store.get_trigger(str(trigger_id))
        if found is None:
            raise TriggerNotFound(str(trigger_id))
        return masked(found)

    async def list(self, page: Any = 1, page_size: Any = 10) -> Page[Trigger]:
        """One page of triggers, ordered by id (secrets masked)."""
        page, page_size = check_page(page, page_size)
        items, total = await self._store.list_triggers(page, page_size)
        return Page.build([masked(t) for t in items], page, page_size, total)

    async def delete(self, trigger_id: str) -> None:
        """Remove a trigger; its URL answers 404 afterwards."""
        if not await self._store.delete_trigger(str(trigger_id)):
            raise TriggerNotFound(str(trigger_id))

    async def invoke(
        self, trigger_id: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Execution:
        """Verify a request to the trigger and start its execution (or, for a delivery id
        seen before, answer the execution it started).

        ``headers`` with lower-case names, ``body`` the raw bytes as received.

        :raises Unauthorized: no such trigger, or a bad, missing or expired signature
            (the same answer for both, so the URL does not tell which ids exist).
        :raises InvalidRequest: a body that is not JSON, or a mapping that fails on it.
        :raises PayloadTooLarge: a body over :data:`MAX_TRIGGER_BODY_BYTES`.
        """
        if len(body) > MAX_TRIGGER_BODY_BYTES:
            raise PayloadTooLarge(f"A trigger's body is at most {MAX_TRIGGER_BODY_BYTES} bytes")
        trigger = await self._store.get_trigger(str(trigger_id))
        rule = SignatureRule(**attrs.asdict(trigger.signature)) if trigger else SignatureRule()
        secret = trigger.secret if trigger else generate_secret()
        delivery_id = verify(rule, secret, headers, body, time.time() if now is None else now)
        if trigger is None:  # (a random secret verifies nothing: not reached)
            raise Unauthorized("Invalid trigger signature")
        parameters = _parameters(trigger, headers, _json(body))
        key = None
        if delivery_id:
            digest = hashlib.sha256(f"{trigger.id}\0{delivery_id}".encode()).hexdigest()
            key = f"trigger:{digest[:48]}"
        return await self._executions.execute(
            trigger.workflow_id, parameters, wait=False, idempotency_key=key
        )


def _json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The body is not JSON", {"field": "body"}) from None


def _parameters(trigger: Trigger, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
    """The execution's parameters: the mapping evaluated over the request, or the body."""
    if trigger.parameters is None:
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise InvalidRequest(
                "Without a mapping the body must be a JSON object", {"field": "body"}
            )
        return body
    evaluator = SafeEvaluator(names={"body": body, "headers": dict(headers)})
    result: dict[str, Any] = {}
    for name, expression in trigger.parameters.items():
        try:
            result[name] = evaluator.eval(expression)
        except (simpleeval.InvalidExpression, LookupError, TypeError, ValueError) as exc:
            raise InvalidRequest(
                f"The mapping of {name!r} failed on this body: {exc}",
                {"field": f"parameters.{name}"},
            ) from None
    return result

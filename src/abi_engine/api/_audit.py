"""Which operations change something, and how each is written in the audit log.

:data:`AUDITED` maps an operation's name to its :class:`AuditRule`;
:func:`abi_engine.api.operations.call_with_status` reads the target as it
was with the rule's ``before`` operation (a read of the same path), runs the
operation, and once it succeeded (its change committed) records the entry
with ``engine.audit.record``. An operation added later is audited by one line
here (``tests/test_audit.py`` fails for a changing operation without a rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["AUDITED", "AuditRule"]


@attrs.frozen(kw_only=True)
class AuditRule:
    """How one operation is recorded.

    ``action``: e.g. ``workflow.update``; ``target_type``: e.g. ``workflow``;
    ``target``: the path parameter naming the target (``None``: the ``id`` of
    the answer, for creations); ``before``: the read operation giving the
    target as it was (``None``: nothing before); ``after``: whether the
    answer is the target as it is now (``False`` for deletions).
    """

    action: str
    target_type: str
    target: str | None = None
    before: str | None = None
    after: bool = True

    def target_id(self, path: Mapping[str, str], answer: Any) -> str | None:
        if self.target is not None:
            return path.get(self.target)
        if isinstance(answer, Mapping) and answer.get("id") is not None:
            return str(answer["id"])
        return None


def _rules(target_type: str, target: str, read: str, **actions: str) -> dict[str, AuditRule]:
    """Rules of one resource: ``operation name=action`` (``*create*``: no before,
    ``*delete*``/``*revoke*``: no after)."""
    rules: dict[str, AuditRule] = {}
    for name, action in actions.items():
        created = action.endswith((".create", ".put")) and name.startswith("create_")
        deleted = action.endswith((".delete", ".revoke"))
        rules[name] = AuditRule(
            action=action,
            target_type=target_type,
            target=None if created else target,
            before=None if created else read,
            after=not deleted,
        )
    return rules


AUDITED: dict[str, AuditRule] = {
    **_rules(
        "workflow",
        "workflow_id",
        "get_workflow",
        create_workflow="workflow.create",
        update_workflow="workflow.update",
        activate_workflow="workflow.activate",
        deactivate_workflow="workflow.deactivate",
        delete_workflow="workflow.delete",
    ),
    **_rules(
        "schedule",
        "schedule_id",
        "get_schedule",
        create_schedule="schedule.create",
        update_schedule="schedule.update",
        delete_schedule="schedule.delete",
        backfill_schedule="schedule.backfill",
        cancel_schedule_backfill="schedule.backfill_cancel",
    ),
    **_rules(
        "webhook",
        "webhook_id",
        "get_webhook",
        create_webhook="webhook.create",
        update_webhook="webhook.update",
        delete_webhook="webhook.delete",
    ),
    **_rules(
        "integration",
        "integration_id",
        "get_integration",
        put_integration="integration.put",
        delete_integration="integration.delete",
    ),
    **_rules(
        "notification_template",
        "template_id",
        "get_notification_template",
        put_notification_template="notification_template.put",
        delete_notification_template="notification_template.delete",
    ),
    **_rules(
        "execution",
        "execution_id",
        "get_execution",
        cancel_execution="execution.cancel",
        approve_execution="execution.approve",
        reject_execution="execution.reject",
        signal_execution="execution.signal",
        pause_execution="execution.pause",
        resume_execution="execution.resume",
    ),
    **_rules(
        "workflow",
        "workflow_id",
        "get_workflow",
        pause_workflow="workflow.pause",
        resume_workflow="workflow.resume",
    ),
    # A rerun's target is the execution it repeats; "after" is the new execution.
    "rerun_execution": AuditRule(
        action="execution.rerun", target_type="execution", target="execution_id"
    ),
    "rerun_executions": AuditRule(action="execution.rerun_bulk", target_type="execution"),
    **_rules(
        "trigger",
        "trigger_id",
        "get_trigger",
        put_trigger="trigger.put",
        delete_trigger="trigger.delete",
    ),
    # By correlation key: the target is the signal's id (in the answer).
    "send_signal": AuditRule(action="signal.send", target_type="signal"),
    "create_token": AuditRule(action="token.create", target_type="token"),
    "revoke_token": AuditRule(
        action="token.revoke", target_type="token", target="token_id", after=False
    ),
    "redeliver_webhook_delivery": AuditRule(
        action="delivery.redeliver", target_type="delivery", target="delivery_id"
    ),
}

"""The notification type and its providers come through the plugin's entry point."""

from __future__ import annotations

from abi_engine import Engine


def test_entry_point_registers_the_type_and_providers() -> None:
    """An engine loading entry points has `notification`, `smtp` and `slack` from `notification`."""
    engine = Engine(":memory:")
    try:
        assert engine.workflow_types["notification"].description == (
            "Sends notifications based on events"
        )
        origins = engine.registry.origins
        assert origins[("workflow type", "notification")] == "notification"
        assert origins[("integration provider", "smtp")] == "notification"
        assert origins[("integration provider", "slack")] == "notification"
    finally:
        engine.close()

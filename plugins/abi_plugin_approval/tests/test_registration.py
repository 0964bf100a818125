"""The approval type is registered through its entry point, like any outside plugin."""

from __future__ import annotations

from abi_engine import Engine


def test_entry_point_registers_the_type() -> None:
    """An engine loading entry points has `approval`, supplied by the `approval` entry point."""
    engine = Engine(":memory:")
    try:
        assert engine.workflow_types["approval"].description == "Manages approval processes"
        assert engine.registry.origins[("workflow type", "approval")] == "approval"
    finally:
        engine.close()

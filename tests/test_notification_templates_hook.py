"""The abi_notification_templates hook: templates registered by plugins land in the registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from abi_engine import Engine, hookimpl


class Templates:
    @hookimpl
    def abi_notification_templates(self, register: Callable[[str, Any], None]) -> None:
        register("tpl_alert", {"subject": "Alert $name", "body": "Hello $name"})
        register("tpl_short", "Hi $name")


def test_hook_abi_notification_templates() -> None:
    """Registered templates are kept by id with their origin; a duplicate id fails at startup."""
    engine = Engine(":memory:", plugins=[Templates()], load_entry_points=False)
    try:
        assert engine.registry.notification_templates["tpl_short"] == "Hi $name"
        assert engine.registry.notification_templates["tpl_alert"]["subject"] == "Alert $name"
        origin = engine.registry.origins[("notification template", "tpl_alert")]
        assert origin.endswith("Templates")
    finally:
        engine.close()
    with pytest.raises(ValueError, match="notification template 'tpl_alert'"):
        Engine(
            ":memory:",
            plugins=[Templates(), type("Again", (Templates,), {})()],
            load_entry_points=False,
        )

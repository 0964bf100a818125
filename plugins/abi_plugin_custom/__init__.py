"""The ``custom`` workflow type: named Python handlers or declarative steps.

A custom workflow is configured in one of two ways:

* ``{"handler": "<name>"}`` runs the Python handler a host or plugin
  registered under that name with the ``abi_step_handlers`` hook;
* ``{"steps": [...]}`` runs declarative steps built from the built-in actions
  ``delay``, ``http_request`` and ``transform`` (safe expressions over
  ``parameters`` and earlier steps' ``results``, never Python's ``eval``).

It registers through the ``abi_engine`` entry point and the public hooks only,
exactly as a third-party workflow type would, and declares the
``abi_step_handlers`` hook itself (:mod:`abi_plugin_custom.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Callable

from abi_engine import WorkflowType, hookimpl
from abi_plugin_custom import hookspecs
from abi_plugin_custom.workflow import CustomWorkflow

__all__ = ["CustomWorkflow"]


@hookimpl
def abi_hookspecs(add: Callable[[object], None]) -> None:
    add(hookspecs)


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(CustomWorkflow)

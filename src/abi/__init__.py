"""The seed's Python API for abi-engine.

Import it as the seed shows::

    from abi.workflows import WorkflowManager, WorkflowConfig, WorkflowExecutor, WorkflowScheduler
"""

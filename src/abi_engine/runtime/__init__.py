"""The runtime: what runs in the background of a started engine.

- :mod:`~abi_engine.runtime.runner`: :class:`~abi_engine.runtime.runner.Runtime`,
  the workers, queue, lanes, claims and recovery of one node;
  :mod:`~abi_engine.runtime.steps` runs one execution (steps, checkpoints,
  suspension, the end); :mod:`~abi_engine.runtime.execution` what a run holds.
- :mod:`~abi_engine.runtime.commit`: the group committer (writes batched into
  one transaction, events handed on after the commit).
- :mod:`~abi_engine.runtime.leases`: the claims a node holds, renewed by a
  heartbeat thread.
- :mod:`~abi_engine.runtime.scheduler`: the scheduler loop (due times fired once).
- :mod:`~abi_engine.runtime.delivery`: the webhook and callback delivery worker.
- :mod:`~abi_engine.runtime.settings`: their tuning.

The services (:mod:`abi_engine.executions`, :mod:`abi_engine.schedules`,
:mod:`abi_engine.webhooks`) sit above and hand work to them.
"""

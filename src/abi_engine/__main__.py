"""``python -m abi_engine``: the ``abi-engine`` command line."""

from abi_engine.cli import main

raise SystemExit(main())

"""The SQL both stores share, written once against a :class:`~.dialect.Dialect`."""

from abi_engine.storage.sql.dialect import POSTGRES, SQLITE, Dialect

__all__ = ["POSTGRES", "SQLITE", "Dialect"]

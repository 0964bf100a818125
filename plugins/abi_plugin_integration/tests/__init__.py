"""Tests of the integration (synchronization) type."""

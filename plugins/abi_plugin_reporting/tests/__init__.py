"""Tests of the reporting type."""

"""Tests of the data_processing type and the shared record tools."""

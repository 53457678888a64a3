"""Transports: how the task API and the worker reach a broker."""

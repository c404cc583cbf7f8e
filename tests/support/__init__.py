"""Shared helpers for the trial tests (databases, certificates, ...)."""

"""Thin Ray wrappers that own state and concurrency; the logic lives in the core modules."""

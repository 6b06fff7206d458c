"""Typed stores on a Backend: one module per resource family."""

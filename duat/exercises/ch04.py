"""Exercises of notebook 04 (to be written)."""

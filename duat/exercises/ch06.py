"""Exercises of notebook 06 (to be written)."""

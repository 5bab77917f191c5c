"""Exercises of notebook 07 (to be written)."""

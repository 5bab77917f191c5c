"""Exercises of notebook 09 (to be written)."""

"""Exercises of notebook 03 (to be written)."""

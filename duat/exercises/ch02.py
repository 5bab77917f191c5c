"""Exercises of notebook 02 (to be written)."""

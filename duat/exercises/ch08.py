"""Exercises of notebook 08 (to be written)."""

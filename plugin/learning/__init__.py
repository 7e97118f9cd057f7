"""Trailmark's learning rules: pure functions over plain frozen dataclasses (see README.md)."""

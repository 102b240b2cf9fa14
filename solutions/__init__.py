"""Solved versions of the modules in `exercises/`, with the same names."""

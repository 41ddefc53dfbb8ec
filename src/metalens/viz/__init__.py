"""Plots (matplotlib) and HTML views."""

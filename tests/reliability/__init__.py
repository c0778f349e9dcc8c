"""Reliability: chaos under load, signals, a crashed supervisor, bad input.

A package (unlike ``tests/integration``) so its modules may share basenames with
other test directories without pytest's "import file mismatch".
"""

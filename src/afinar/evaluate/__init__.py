"""Domain evaluation: checks that need no model (checks.py) and, later, contrast and reports."""

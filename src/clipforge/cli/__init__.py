"""Command-line entry points: one thin module per verb, registered in ``main.py``."""

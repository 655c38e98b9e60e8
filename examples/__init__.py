"""Runnable examples; ``python -m examples.demo`` is the README's demo."""

"""The configs shipped with medlatent (YAML package data; ``medlatent demo`` and the docs use them)."""

"""Subcommands of the ``femur-fe`` CLI; each module defines ``register(subparsers)``."""

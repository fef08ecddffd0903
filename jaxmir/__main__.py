"""``python -m jaxmir``: the same as the ``jaxmir`` command."""

from jaxmir.cli import entry

entry()

"""``python -m compress.cli`` runs the ``compress`` command."""

from compress.cli import entry

entry()

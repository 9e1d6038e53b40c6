"""``python -m compress.cli`` runs the ``compress`` command."""

from compress.cli import main

main(prog_name="compress")

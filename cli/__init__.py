"""The ``streamtoken`` command-line program."""

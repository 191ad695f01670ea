"""``python -m gateway``: the same as ``headwater gateway``."""

from gateway.cli import main

main()

"""``python -m pvtunnel``."""

from pvtunnel._cli import main

main()

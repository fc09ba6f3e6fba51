"""``python -m vnmini.cli`` == ``vnmini``."""

from vnmini.cli import main

main()

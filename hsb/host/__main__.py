"""python -m entry point."""

from hsb.host.main import main

main()

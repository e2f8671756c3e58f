"""python -m entry point."""

from hsb.term.main import main

main()

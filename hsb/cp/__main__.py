"""python -m entry point."""

from hsb.cp.main import main

main()

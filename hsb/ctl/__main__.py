"""python -m entry point."""

from hsb.ctl.main import main

main()

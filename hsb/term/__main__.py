"""`python -m hsb.term`: the same as the `hsbterm` console script."""

from hsb.term.main import main

main(prog_name="hsbterm")

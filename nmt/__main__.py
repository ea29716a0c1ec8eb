"""`python -m nmt`: the command line (what torchrun runs)."""

from nmt.cli import main

main()

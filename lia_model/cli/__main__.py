"""python -m lia_model.cli: the lia command."""

from lia_model.cli import main

main()

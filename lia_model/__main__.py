"""python -m lia_model: the lia command."""

from lia_model.cli import main

main()

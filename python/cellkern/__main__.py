"""`python -m cellkern ...` runs the command-line interface."""
from .cli import main

main()

"""`python -m app` runs the `jobs-gateway` command."""

from app.cli import main

main()

"""`python -m app` runs the `jobs-gateway` command."""

import gc

# The command's imports build only what lives as long as the process: no garbage collection
# while they run (see `app.cli.collection_paused`).
gc.disable()
from app.cli import main  # noqa: E402

gc.enable()
main()

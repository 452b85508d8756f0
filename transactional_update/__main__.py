"""``python -m transactional_update``."""

from transactional_update.cli.entry import main

main()

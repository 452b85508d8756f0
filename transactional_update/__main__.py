"""``python -m transactional_update``."""

from transactional_update.cli import main

main()

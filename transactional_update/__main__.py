"""``python -m transactional_update``."""

from transactional_update.entry import main

main()

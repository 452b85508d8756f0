"""transactional-update: atomic, reversible changes to a btrfs root managed by snapper."""

__version__ = "0.1.0"

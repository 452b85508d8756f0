"""The VM tier: real boots of managed systems in qemu (testkit/vm.py).

Every test here is marked ``vm`` and also ``privileged``: the golden image is made on a loop
device as root, so the root conftest's skip for privileged tests applies to these too.
"""

from __future__ import annotations

import pytest


def pytest_itemcollected(item: pytest.Item) -> None:
    # pytest calls this through the item's own directory's conftests: items under tests/vm.
    item.add_marker(pytest.mark.vm)
    item.add_marker(pytest.mark.privileged)

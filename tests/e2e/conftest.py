"""End-to-end tests: a whole deployment shape, offline, driven the way a user drives it.

These reuse the integration tests' real servers (``tests/integration/servers.py``), the
local Lambda Runtime API with real ``awslambdaric`` environments
(``tests/integration/lambda_runtime.py``) and the deployment's own code (``infra/``), so
both folders are put on ``sys.path`` here. Every test in this folder is marked ``e2e``
and ``integration``; ``pytest -m e2e`` runs just these.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _folder in (_TESTS / "integration", _TESTS / "infra", _TESTS.parent / "infra"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from servers import fake_gcs_server, moto_server  # noqa: E402

__all__ = ["fake_gcs_server", "moto_server"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.integration)

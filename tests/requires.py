"""What a test needs from the machine (a PostgreSQL server, network namespaces, Fashion-MNIST): skip with the
reason where it is missing, but fail under CI (`CI=true`), where `.ci/run` installs all of it, so a green CI
never hides a whole area that did not run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI must run this test, but: {reason}", pytrace=False)
    pytest.skip(reason)

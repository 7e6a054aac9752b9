"""Session-wide test setup: a private kernel cache folder per test run."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    if "EETJIT_CACHE_DIR" not in os.environ:
        os.environ["EETJIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("eetjit-cache"))

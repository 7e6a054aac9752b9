"""tests/codegen: every kernel against its NumPy reference, and the caches (compile counts, disk, keys).

The kernel cache goes to a fresh temporary folder for the session (EETJIT_CACHE_DIR), so compile counts do not
depend on what an earlier run left behind. JIT compiles dominate the run time: property tests draw their
specialization constants from a few fixed values and vary the runtime sizes.
"""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def kernel_cache_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eetjit-cache")
    old = os.environ.get("EETJIT_CACHE_DIR")
    os.environ["EETJIT_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("EETJIT_CACHE_DIR", None)
    else:
        os.environ["EETJIT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def backend():
    from eetjit.backends.cpu import CpuBackend
    return CpuBackend(verbose=False)

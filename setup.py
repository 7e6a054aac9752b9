# Package layout only (metadata lives in pyproject.toml): templates/ and graphs/ sit beside the package in
# the source tree (DESIGN.md's layout) and are installed inside it as eetjit/templates and eetjit/graphs.
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["eetjit", "eetjit.*"]) + ["eetjit.templates", "eetjit.templates.cpu",
                                                               "eetjit.templates.cuda", "eetjit.graphs"],
    package_dir={"eetjit.templates": "templates", "eetjit.graphs": "graphs"},
)

"""Importing this package registers every reference kernel (each ``op_*.py`` module)."""
import importlib
import pkgutil

__all__ = []

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod.startswith("op_"):
        importlib.import_module(f"{__name__}.{_mod}")
        __all__.append(_mod)

"""Runtime: `Session` (run / generate) over a compiled plan."""
from eetjit.runtime.session import Session

__all__ = ["Session"]

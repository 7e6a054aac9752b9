"""Where the shipped data lives: `templates/` and `graphs/`.

In the source tree they sit beside the package; an installed wheel carries them inside it
(`eetjit/templates`, `eetjit/graphs`, mapped in pyproject.toml). Both layouts are looked up here, once.
"""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"eetjit's {name}/ folder is missing from the installation")


def templates_dir() -> Path:
    return data_dir("templates")


def graphs_dir() -> Path:
    return data_dir("graphs")


def default_model() -> Path:
    """The shipped tiny GPT-2 (TorchScript export, opset 17, eager attention)."""
    return graphs_dir() / "gpt2-ts17-eager.onnx"

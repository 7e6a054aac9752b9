"""Shared test helpers (importable as `cases` from every test folder): the committed fixtures, random feeds."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eetjit.resources import graphs_dir

GRAPHS = graphs_dir()
FAMILIES = ("gpt2", "bert", "llama")
FLAVORS = ("ts14", "ts17", "dyn18", "dyn23")
ATTNS = ("eager", "sdpa")


def fixture_names() -> list[str]:
    return sorted(p.name[: -len(".onnx")] for p in GRAPHS.glob("*.onnx"))


def fixture_path(name: str) -> Path:
    return GRAPHS / f"{name}.onnx"


def family(name: str) -> str:
    return name.split("-")[0]


def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(GRAPHS / f"{name}.ref.npz") as d:
        return {k: d[k] for k in d.files}


def random_feeds(name: str, lengths=(7, 5, 2, 1), S: int | None = None, seed: int = 0, vocab: int = 97):
    """A padded batch of mixed lengths: left padding for decoders, right padding for BERT."""
    rng = np.random.default_rng(seed)
    S = S or max(lengths)
    B = len(lengths)
    ids = rng.integers(3, vocab, (B, S)).astype(np.int64)
    mask = np.zeros((B, S), np.int64)
    for b, n in enumerate(lengths):
        if family(name) == "bert":
            mask[b, :n] = 1
        else:
            mask[b, S - n:] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if family(name) == "bert":
        feeds["token_type_ids"] = rng.integers(0, 2, (B, S)).astype(np.int64)
    return feeds


def real_positions(feeds) -> np.ndarray:
    return feeds["attention_mask"].astype(bool)


def assert_rel_close(got, want, rel=1e-5):
    """Relative error of a tensor: max |got - want| over max |want| (float32 noise in a 1e-5 budget)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= rel, f"relative error {err:.3g} > {rel:g}"

"""Every committed fixture loads, runs through the reference executor, and agrees with onnxruntime (fp32, 1e-5)
and with the transformers outputs stored beside it."""
from __future__ import annotations

import numpy as np
import pytest

import eetjit
from cases import GRAPHS, fixture_names, fixture_path, random_feeds, reference

NAMES = fixture_names()
ORT_CANNOT_RUN = {n for n in NAMES if n.startswith("llama-dyn23")}  # ORT's RotaryEmbedding rejects the export


def test_every_cell_is_present():
    expected = {f"{fam}-{fl}-{a}" for fam in ("gpt2", "bert", "llama") for fl in ("ts14", "ts17", "dyn18", "dyn23")
                for a in ("eager", "sdpa")}
    assert expected <= set(NAMES), sorted(expected - set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_transformers(name):
    ref = reference(name)
    feeds = {k: v for k, v in ref.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    want = ref["logits"] if "logits" in ref else ref["last_hidden_state"]
    (got,) = eetjit.compile(fixture_path(name), fuse=False).run(None, feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ORT_CANNOT_RUN])
def test_reference_matches_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    feeds = random_feeds(name)
    sess = ort.InferenceSession(str(fixture_path(name)), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    got = eetjit.compile(fixture_path(name), fuse=False).run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("name", NAMES)
def test_inspect_works(name, capsys):
    from eetjit.cli import main
    assert main(["inspect", str(fixture_path(name)), "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] and info["outputs"] and info["ops"]

"""Session.run validates feeds: every wrong feed is an InputError naming input, expected and received."""
import numpy as np
import pytest

import eetjit
from eetjit import InputError
from eetjit.resources import default_model


@pytest.fixture(scope="module")
def sess():
    return eetjit.compile(default_model())


def feeds(b=2, s=5):
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(3, 90, (b, s)).astype(np.int64), "attention_mask": np.ones((b, s), np.int64)}


def test_ok(sess):
    (logits,) = sess.run(None, feeds())
    assert logits.shape[:2] == (2, 5) and np.isfinite(logits).all()


def test_unknown_name(sess):
    f = feeds()
    f["input_idz"] = f.pop("input_ids")
    with pytest.raises(InputError, match="input_idz"):
        sess.run(None, f)


def test_missing(sess):
    f = feeds()
    del f["attention_mask"]
    with pytest.raises(InputError, match="missing.*attention_mask"):
        sess.run(None, f)


def test_dtype(sess):
    f = feeds()
    f["input_ids"] = f["input_ids"].astype(np.float32)
    with pytest.raises(InputError, match="input_ids.*int64.*float32"):
        sess.run(None, f)


def test_rank(sess):
    f = feeds()
    f["input_ids"] = f["input_ids"][0]
    with pytest.raises(InputError, match="input_ids.*rank 2"):
        sess.run(None, f)


def test_inconsistent_symbolic_dim(sess):
    f = feeds()
    f["attention_mask"] = np.ones((2, 6), np.int64)
    with pytest.raises(InputError, match="attention_mask"):
        sess.run(None, f)


def test_unknown_output(sess):
    with pytest.raises(InputError, match="nope"):
        sess.run(["nope"], feeds())

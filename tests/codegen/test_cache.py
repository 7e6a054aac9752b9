"""The kernel caches: compile counts (memory), sequence buckets, template edits (key), a second process (disk).

Every test uses constants no other test uses (an odd epsilon or scale), so its kernel starts uncompiled.
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import eetjit
from eetjit import codegen
from eetjit.backends.cpu import CpuBackend

from .helpers import single_node, values

REPO = Path(eetjit.__file__).resolve().parents[1]


def layer_norm_node(rng, E, eps, lead=(3, 5)):
    inputs = [values(rng, lead + (E,)), values(rng, (E,)), values(rng, (E,))]
    return inputs, single_node("LayerNorm", inputs, {"epsilon": eps}, const={1, 2})


def test_seq_bucket():
    assert [codegen.seq_bucket(s) for s in (0, 1, 15, 16, 17, 32, 33, 1000, 1024, 1025)] == \
           [16, 16, 16, 16, 32, 32, 64, 1024, 1024, 2048]


def test_key_is_order_free_and_sees_every_part():
    src = codegen.template_source("layer_norm")
    base = codegen.specialization_key("layer_norm", "cpu", "float32", {"hidden": 8, "epsilon": 1e-5}, None, src)
    same = codegen.specialization_key("layer_norm", "cpu", np.float32, {"epsilon": np.float64(1e-5),
                                                                         "hidden": np.int64(8)}, None, src)
    assert base == same and base.digest == same.digest
    variants = [("rms_norm", "cpu", "float32", {"hidden": 8, "epsilon": 1e-5}, None, src),
                ("layer_norm", "cpu", "float64", {"hidden": 8, "epsilon": 1e-5}, None, src),
                ("layer_norm", "cpu", "float32", {"hidden": 9, "epsilon": 1e-5}, None, src),
                ("layer_norm", "cpu", "float32", {"hidden": 8, "epsilon": 1e-6}, None, src),
                ("layer_norm", "cpu", "float32", {"hidden": 8, "epsilon": 1e-5}, 32, src),
                ("layer_norm", "cpu", "float32", {"hidden": 8, "epsilon": 1e-5}, None, src + "#")]
    digests = {codegen.specialization_key(*v).digest for v in variants}
    assert len(digests | {base.digest}) == len(variants) + 1
    assert dict(base.versions)["numba"] and dict(base.versions)["numpy"]


def test_template_source_includes_the_macros():
    src = codegen.template_source("attention")
    assert "=== _macros.j2" in src and "=== attention.py.j2" in src


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_scan_matches_jinja_on_shipped_templates(target):
    """The key's template text follows the references found by a scan of the tags; Jinja's parse (which the scan
    replaces for speed) must find the same ones in every shipped template."""
    render = importlib.import_module("eetjit.codegen.render")   # the module (codegen.render is the function)
    folder = render.templates_root() / target
    env = render._environment(folder)
    for path in sorted(folder.glob("*.j2")):
        text = path.read_text()
        parsed = render.parsed_references(env, text)
        assert sorted(render._referenced(env, text)) == sorted(parsed), path.name
        # ... and the scan answers alone: a shipped template that fell back to the parse would cost a warm start
        with mock.patch.object(type(env), "parse", side_effect=AssertionError(f"{path.name}: parsed")):
            render._referenced(env, text)


@pytest.mark.parametrize("text, names", [
    ('{% import "_macros.j2" as m with context %}', ["_macros.j2"]),
    ("{%- from 'a.j2' import x, y -%}\n{% include \"b.j2\" ignore missing %}", ["a.j2", "b.j2"]),
    ("{% extends 'base.j2' %}", ["base.j2"]),
    ('{# {% include "commented.j2" %} #}', []),
    ('{% include ["a.j2", "b.j2"] %}', ["a.j2", "b.j2"]),        # not a plain literal: Jinja's parse
    ('{% include "a.j2" if x else "b.j2" %}', []),               # computed: Jinja cannot name it either
    ('{% include "a" ~ b %}{% import "c.j2" as c %}', ["c.j2"]),
    ('{% raw %}{% include "not_a_tag.j2" %}{% endraw %}', []),
    # a delimiter inside a string is no delimiter (the scan cuts the text as Jinja's lexer does)
    ('{{ "{#" }}{% include "a.j2" %}{{ "#}" }}', ["a.j2"]),
    ('{% set o = "{#" %}{% import "b.j2" as m %}{% set c = "#}" %}', ["b.j2"]),
    ('{{ "{% include \'x.j2\' %}" }}', []),
    ('{% set s = "{% include \'x.j2\' %}" %}', []),
    ('{% include "100%}.j2" %}', ["100%}.j2"]),
    ('{#- {% include "c.j2" %} -#}{% include "d.j2" %}', ["d.j2"]),
    ('{{ "\\"" }}{% include "e.j2" %}', ["e.j2"]),                # an escaped quote: Jinja's parse
    ('{% set d = {"a": {"b": 1}} ~ "{#" %}{% include "x.j2" %}{{ "#}" }}', ["x.j2"]),   # a }} inside a tag
])
def test_template_references_of_each_tag_form(text, names):
    render = importlib.import_module("eetjit.codegen.render")
    env = render._environment(render.templates_root() / "cpu")
    assert sorted(render._referenced(env, text)) == names
    assert sorted(render.parsed_references(env, text)) == names


def test_setup_thread_finds_numbas_registry_refresh():
    """eetjit.compile's CUDA setup thread loads Numba's lowering registries by these names, and swallows its own
    errors (the Session reports what matters): a rename in numba-cuda would only show as a slower first generate.
    In a process of its own without the simulator (tests/cuda's conftest turns it on for this one), as on a GPU;
    making the target context and refreshing it needs no device."""
    check = ("from numba.cuda.core.compiler_lock import global_compiler_lock\n"
             "from numba.cuda.descriptor import cuda_target\n"
             "with global_compiler_lock:\n"
             "    cuda_target.target_context.refresh()\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ten_calls_one_compile(backend):
    rng = np.random.default_rng(0)
    codegen.reset_stats()
    inputs, (g, node) = layer_norm_node(rng, 12, 1.25e-5)
    op = backend.prepare(node, g)
    for _ in range(10):
        op(inputs)
    assert codegen.stats() == {"renders": 1, "compiles": 1, "disk_hits": 0}
    # a second node with the same specialization (another layer) shares the kernel
    inputs2, (g2, node2) = layer_norm_node(rng, 12, 1.25e-5, lead=(7,))
    for _ in range(10):
        backend.prepare(node2, g2)(inputs2)
    assert codegen.stats() == {"renders": 1, "compiles": 1, "disk_hits": 0}
    # ... and so does a new backend object in this process (the memory cache is per device, not per backend)
    CpuBackend(verbose=False).prepare(node, g)(inputs)
    assert codegen.stats()["compiles"] == 1


def test_new_length_in_bucket_does_not_recompile(backend):
    rng = np.random.default_rng(1)
    H, D = 2, 8
    attrs = {"num_heads": H, "kv_num_heads": H, "head_dim": D, "scale": 0.3125, "causal": 1}

    def run(S):
        inputs = [values(rng, (2, S, H * D)) for _ in range(3)]
        g, node = single_node("Attention", inputs, attrs)
        backend.prepare(node, g)(inputs)

    codegen.reset_stats()
    run(17)
    assert codegen.stats()["compiles"] == 1
    for S in (18, 20, 31, 32):                      # the same bucket (32)
        run(S)
    assert codegen.stats()["compiles"] == 1
    run(33)                                          # bucket 64
    assert codegen.stats()["compiles"] == 2


@pytest.fixture
def edited_templates(tmp_path):
    folder = tmp_path / "templates"
    shutil.copytree(codegen.templates_root(), folder)
    return folder


def test_edited_template_is_a_new_key(edited_templates):
    consts = {"hidden": 12, "epsilon": 1.5e-5, "has_beta": True}
    key = lambda op, folder=None: codegen.specialization_key(  # noqa: E731
        op, "cpu", "float32", consts, None, codegen.template_source(op, "cpu", folder))
    shipped = codegen.get_kernel("layer_norm", consts)
    assert key("layer_norm", edited_templates) == key("layer_norm")   # a faithful copy: same key

    ln = edited_templates / "cpu" / "layer_norm.py.j2"
    ln.write_text(ln.read_text().replace("def kernel(", "# edited\ndef kernel(", 1))
    assert key("layer_norm", edited_templates) != key("layer_norm")
    codegen.reset_stats()
    edited = codegen.get_kernel("layer_norm", consts, templates_dir=edited_templates)
    assert edited is not shipped
    assert "# edited" in codegen.kernel_path(edited).read_text()
    assert codegen.stats() == {"renders": 1, "compiles": 1, "disk_hits": 0}

    # the shared macros are part of every key that imports them
    attention_before = key("attention", edited_templates)
    macros = edited_templates / "cpu" / "_macros.j2"
    macros.write_text(macros.read_text() + "\n{# edited #}\n")
    assert key("attention", edited_templates) != attention_before


def test_templates_dir_from_the_environment(edited_templates, monkeypatch):
    ln = edited_templates / "cpu" / "layer_norm.py.j2"
    ln.write_text(ln.read_text() + "\n# from EETJIT_TEMPLATES_DIR\n")
    monkeypatch.setenv("EETJIT_TEMPLATES_DIR", str(edited_templates))
    fn = codegen.get_kernel("layer_norm", {"hidden": 12, "epsilon": 1.5e-5, "has_beta": True})
    assert "# from EETJIT_TEMPLATES_DIR" in codegen.kernel_path(fn).read_text()


def test_dump_dir_gets_every_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("EETJIT_DUMP_DIR", str(tmp_path / "dump"))
    fn = codegen.get_kernel("rms_norm", {"hidden": 12, "epsilon": 1.75e-6})
    dumped = tmp_path / "dump" / codegen.kernel_path(fn).name
    assert dumped.read_text() == codegen.kernel_path(fn).read_text()
    assert "range(12)" in dumped.read_text() and "np.float32(1.75e-06)" in dumped.read_text()


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from eetjit import codegen
    from eetjit.backends.cpu import CpuBackend
    sys.path.insert(0, sys.argv[1])
    from codegen_helpers import single_node, values
    rng = np.random.default_rng(0)
    inputs = [values(rng, (3, 12)), values(rng, (12,)), values(rng, (12,))]
    g, node = single_node("LayerNorm", inputs, {"epsilon": 1.125e-5}, const={1, 2})
    y = CpuBackend(verbose=False).prepare(node, g)(inputs)[0]
    print(json.dumps(codegen.stats()))
""")


def test_second_process_loads_from_disk(backend, kernel_cache_dir, tmp_path):
    rng = np.random.default_rng(0)
    inputs, (g, node) = layer_norm_node(rng, 12, 1.125e-5)
    codegen.reset_stats()
    backend.prepare(node, g)(inputs)
    assert codegen.stats()["compiles"] == 1
    fn = backend.kernel("layer_norm", hidden=12, epsilon=1.125e-5, has_beta=True)
    path = codegen.kernel_path(fn)
    assert path.parent.parent.parent == kernel_cache_dir                  # <cache>/kernels/cpu/<key>.py
    assert list((path.parent / "__pycache__").glob(path.stem + ".*.nbi"))  # Numba's cache, beside it

    shutil.copy(Path(__file__).with_name("helpers.py"), tmp_path / "codegen_helpers.py")
    env = dict(os.environ, EETJIT_CACHE_DIR=str(kernel_cache_dir),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {"renders": 0, "compiles": 0, "disk_hits": 1}


def test_progress_bar_is_silent_without_a_terminal():
    # pytest captures stderr, so it is not a TTY here
    assert codegen.progress([1], verbose=True).disable
    assert codegen.progress([1], verbose=False).disable


def test_rendered_kernels_are_real_files_with_real_tracebacks(backend):
    fn = backend.kernel("rms_norm", hidden=12, epsilon=1.75e-6)
    path = codegen.kernel_path(fn)
    assert path.is_file() and path.suffix == ".py"
    assert fn.py_func.__module__ == path.stem

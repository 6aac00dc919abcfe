"""Traced programs kept on disk (robust_vision.program_cache): a hit gives the same results as
plain jit, and the key changes with everything the trace depends on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from robust_vision import program_cache
from robust_vision.compile_cache import enable_compile_cache
from robust_vision.program_cache import CachedProgram, cached_jit

REPO = Path(__file__).resolve().parents[1]


class _Net(nnx.Module):
    """A list of layers (nnx.State with integer keys), batch norm and dropout RNG streams."""

    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.layers[1](self.drop(self.bn(self.layers[0](x))))


def _state_and_step():
    model = _Net(nnx.Rngs(0))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)
    state = {"params": params, "rest": rest, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

    def step(state, x, key):
        def loss(p):
            m = nnx.merge(graph, p, jax.tree.map(lambda a: a, state["rest"]))
            nnx.reseed(m, dropout=key)
            out = m(x)
            return jnp.mean(out ** 2), nnx.state(m, nnx.BatchStat)
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt, "step": state["step"] + 1}
        return new, {"loss": value, "key": jax.random.split(key)[0]}

    return state, step


def _leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A cache of this test's own (conftest's autouse fixture points the next test back)."""
    monkeypatch.setenv("ROBUST_VISION_CACHE_DIR", str(tmp_path / "cache"))
    enable_compile_cache()
    return tmp_path / "cache" / "programs"


def test_hit_equals_plain_jit_bit_for_bit_and_keeps_the_structure(cache_dir):
    state, step = _state_and_step()
    x, key = jnp.linspace(0, 1, 15, dtype=jnp.float32).reshape(5, 3), jax.random.key(3)
    reference = jax.jit(step)(jax.tree.map(jnp.array, state), x, key)
    outputs = []
    for expected_hits in (0, 1):  # a fresh program object each time: as a second process would
        program = cached_jit(step, name="toy_step", key={"lr": 1e-2}, donate_argnums=(0,))
        copy = jax.tree.map(jnp.array, state)
        out = program(copy, x, key)
        assert (program.hits, program.misses) == (expected_hits, 1 - expected_hits)
        assert jax.tree.leaves(copy)[0].is_deleted()  # the state was donated
        outputs.append(out)
    assert len(list(cache_dir.glob("toy_step-*" + program_cache.SUFFIX))) == 1
    for out in outputs:
        assert jax.tree.structure(out) == jax.tree.structure(reference)
        assert isinstance(out[0]["params"], nnx.State)
        for a, b in zip(_leaves(out), _leaves(reference)):
            np.testing.assert_array_equal(a, b)
    # The returned state feeds the next step (same structure, same program, no new export).
    program(out[0], x, key)
    assert program.misses == 0 and len(program._programs) == 1


def test_key_source_shape_and_donation_each_change_the_program(cache_dir, monkeypatch):
    f = lambda a, b: {"sum": a + b}  # noqa: E731
    a, b = jnp.ones((2, 3)), jnp.ones((2, 3))
    cached_jit(f, name="toy", key={"k": 1})(a, b)
    variants = [
        lambda: cached_jit(f, name="toy", key={"k": 2})(a, b),                        # caller's key
        lambda: cached_jit(f, name="toy", key={"k": 1})(a, jnp.ones((2, 4))[:, :3] * 1),  # same shape: hit
        lambda: cached_jit(f, name="toy", key={"k": 1})(jnp.ones((3, 3)), jnp.ones((3, 3))),  # shape
        lambda: cached_jit(f, name="toy", key={"k": 1})(a.astype(jnp.bfloat16), b),     # dtype
        lambda: cached_jit(f, name="toy", key={"k": 1}, donate_argnums=(1,))(a, jnp.ones((2, 3))),  # donation
    ]
    counts = []
    for make in variants:
        before = set(cache_dir.iterdir())
        make()
        counts.append(len(set(cache_dir.iterdir()) - before))
    assert counts == [1, 0, 1, 1, 1]
    # A change to any source file of the package is a new program.
    program_cache.package_fingerprint.cache_clear()
    real = program_cache.package_fingerprint()
    monkeypatch.setattr(program_cache, "package_fingerprint", lambda: real + "edited")
    before = set(cache_dir.iterdir())
    cached_jit(f, name="toy", key={"k": 1})(a, b)
    assert len(set(cache_dir.iterdir()) - before) == 1


def test_outside_source_files_are_part_of_the_key(cache_dir, tmp_path, monkeypatch):
    module = tmp_path / "user_model.py"
    module.write_text("def scale(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_model

    first = program_cache.source_fingerprint([user_model.scale])
    module.write_text("def scale(x):\n    return 3 * x\n")
    program_cache._file_digest.cache_clear()
    assert program_cache.source_fingerprint([user_model.scale]) != first
    # Package objects name themselves (two attacks of one file differ), without a file digest.
    from robust_vision.attacks import fgsm, pgd

    assert program_cache.source_fingerprint([fgsm]) != program_cache.source_fingerprint([pgd])


def test_damaged_file_is_a_miss_and_is_rewritten(cache_dir):
    f = lambda a: a * 2  # noqa: E731
    a = jnp.arange(4.0)
    cached_jit(f, name="toy2", key={})(a)
    (path,) = cache_dir.glob("toy2-*")
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00junk")
    program = cached_jit(f, name="toy2", key={})
    np.testing.assert_array_equal(program(a), a * 2)
    assert (program.hits, program.misses) == (0, 1) and path.stat().st_size > 100


def test_unexportable_program_runs_as_plain_jit_and_is_not_traced_twice(cache_dir):
    def host(a):
        return jax.pure_callback(lambda v: np.asarray(v) + 1, jax.ShapeDtypeStruct(a.shape, a.dtype), a)

    a = jnp.arange(3.0)
    for _ in range(2):
        program = cached_jit(host, name="host", key={})
        np.testing.assert_array_equal(program(a), a + 1)
        assert (program.hits, program.misses) == (0, 0)
    assert [p.suffix for p in cache_dir.glob("host-*")] == [".unexportable"]


def test_off_with_the_compile_cache_and_inside_other_traces(tmp_path, monkeypatch):
    f = lambda a: a + 1  # noqa: E731
    monkeypatch.setenv("ROBUST_VISION_CACHE_DIR", "off")
    assert enable_compile_cache() is None and program_cache.cache_directory() is None
    program = cached_jit(f, name="off", key={})
    np.testing.assert_array_equal(program(jnp.zeros(2)), jnp.ones(2))
    assert (program.hits, program.misses) == (0, 0)
    monkeypatch.setenv("ROBUST_VISION_CACHE_DIR", str(tmp_path / "cache"))
    enable_compile_cache()
    program = cached_jit(f, name="traced", key={})
    np.testing.assert_array_equal(jax.jit(lambda a: program(a) * 2)(jnp.zeros(2)), 2 * jnp.ones(2))
    assert program.misses == 0  # called with tracers: inlined into the outer program
    assert cached_jit(f, name="plain", key=None)(jnp.zeros(1)) == 1  # key None: plain jit


def test_tree_codec_round_trips_nnx_and_optax_structures():
    state, _ = _state_and_step()
    tree = jax.tree.structure(state)
    encoded = json.loads(json.dumps(program_cache.encode_tree(tree)))
    assert program_cache.decode_tree(encoded, {**program_cache._known_types(), **program_cache.node_types(tree)}) == tree
    with pytest.raises(KeyError):  # a type the call does not know is never looked up by name
        program_cache.decode_tree(encoded, program_cache._known_types())


def test_model_program_key_names_graph_config_and_rng_streams():
    from robust_vision.config import load_config
    from robust_vision.models import create_model
    from robust_vision.models.state import model_program_key, split_model

    cfg = load_config(None, ["model.features=[8, 16]"])
    parts = split_model(create_model(cfg.model, input_shape=(8, 8, 1), num_classes=10, seed=0))
    key = model_program_key(parts, cfg.model, cfg.training, steps_per_epoch=3)
    json.dumps(key.key)  # JSON-able
    assert "0x" not in json.dumps(key.key) and any(t.__name__ == "ProductionCNN" for t in key.sources)
    other_seed = split_model(create_model(cfg.model, input_shape=(8, 8, 1), num_classes=10, seed=1))
    assert model_program_key(other_seed, cfg.model, cfg.training, steps_per_epoch=3).key["rng"] != key.key["rng"]
    wider = load_config(None, ["model.features=[8, 32]"])
    parts_w = split_model(create_model(wider.model, input_shape=(8, 8, 1), num_classes=10, seed=0))
    assert model_program_key(parts_w, wider.model, cfg.training, steps_per_epoch=3).key["graphs"] != key.key["graphs"]
    assert model_program_key(parts, cfg.model, cfg.training, steps_per_epoch=4).key != key.key
    moved = load_config(None, ["model.features=[8, 16]", "training.checkpoint_dir=/elsewhere", "training.progress_bar=false"])
    assert model_program_key(parts, moved.model, moved.training, steps_per_epoch=3).key == key.key


_SCRIPT = textwrap.dedent("""
    import json, sys
    from robust_vision.compile_cache import enable_compile_cache
    enable_compile_cache(sys.argv[1])
    import jax, jax.numpy as jnp
    from flax import nnx
    sys.path.insert(0, sys.argv[2])
    from test_program_cache import _state_and_step, _leaves
    from robust_vision.program_cache import cached_jit
    state, step = _state_and_step()
    program = cached_jit(step, name="toy_step", key={"lr": 1e-2}, donate_argnums=(0,))
    out = program(state, jnp.ones((5, 3)), jax.random.key(0))
    print(json.dumps({"hits": program.hits, "misses": program.misses,
                      "sum": float(sum(float(a.astype("float64").sum()) for a in _leaves(out)))}))
""")


def test_a_second_process_reads_the_program_instead_of_tracing_it(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "ROBUST_VISION_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = [json.loads(subprocess.run([sys.executable, str(script), str(tmp_path / "cache"), str(REPO / "tests")],
                                      env=env, capture_output=True, text=True, check=True, timeout=100
                                      ).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert [(r["hits"], r["misses"]) for r in runs] == [(0, 1), (1, 0)]
    assert runs[0]["sum"] == runs[1]["sum"]


def test_a_loaded_models_programs_hit_on_a_second_load(tiny_run, cache_dir):
    from robust_vision.attacks.evaluate import _JIT_CACHE, robust_accuracy
    from test_datasets import load
    from robust_vision.runs.loading import load_trained_model

    results = []
    for expected_hits in (0, 1):
        _JIT_CACHE.clear()
        model = load_trained_model(tiny_run)
        split = load(model.config.data).split("test")
        res = robust_accuracy(model.logits_fn(), split.images[:32], split.labels[:32], jax.random.key(0), "pgd",
                              [0.03], batch_size=32, steps=3)
        (program,) = [fn.func for fn in _JIT_CACHE.values()]
        assert isinstance(program, CachedProgram) and program.hits == expected_hits
        # Every program read from disk: the model's constructor was never traced for its graphs.
        assert model.parts.graphs.built == (expected_hits == 0)
        results.append(res)
    assert results[0] == results[1]


def test_cached_shapes_read_back_without_tracing(cache_dir):
    from robust_vision.program_cache import cached_shapes

    traces = []

    def make_build():  # a new function object each time, as in a new process (no in-memory trace cache)
        def build():
            traces.append(1)
            return {"w": jnp.zeros((3, 2), jnp.bfloat16), "state": nnx.State({"n": jnp.zeros((), jnp.int32)})}
        return build

    def shapes():
        return jax.eval_shape(make_build())

    first = cached_shapes(shapes, name="shapes", key={"a": 1})
    second = cached_shapes(shapes, name="shapes", key={"a": 1})
    assert len(traces) == 1  # the second was read back
    reference = jax.eval_shape(make_build())
    assert first == second == reference and jax.tree.structure(second) == jax.tree.structure(reference)
    cached_shapes(shapes, name="shapes", key={"a": 2})  # another key: traced again
    assert len(traces) == 3

"""Traced programs kept on disk, so that a second identical command skips tracing and lowering.

JAX's persistent compilation cache (``compile_cache``) is keyed by the lowered module, so a
cached run still traces every program in Python and lowers it to StableHLO before it can look
its executable up. On the quickstart CNN that was most of a second run's compile seconds
(``benchmarks/compile_time.py``). ``cached_jit`` keeps the lowered program itself, exported with
``jax.export`` (a flatbuffer; nothing is pickled), under a key that names everything its trace
depends on. A hit deserialises it and runs it through ``jax.jit(exported.call)``, whose small
wrapper module then finds its executable in the XLA cache.

The key holds:

* the program's name and a caller's key, which must name what the function closes over
  (the run config, the model's RNG streams, the attack's static hyper-parameters, ...);
* the content of every source file of the ``robust_vision`` package, plus the source files of
  any outside code the caller names (a user's registered model or attack);
* the versions of JAX, jaxlib, Flax and Optax, the JAX options that change a trace, the
  platform and the device count;
* the argument signature: pytree structure, shape, dtype, weak type and sharding of each leaf,
  and the donated arguments.

When a program cannot be exported (host callbacks, non-serialisable pytree metadata), when a
leaf is not an array, inside another trace, when several devices are used and an argument is
not committed to them (a stored program's outputs always are), with several processes, when
a source file cannot be read, or with the compilation cache off, ``cached_jit`` is plain
``jax.jit``. It lives in the XLA cache's directory (``<cache dir>/programs``) and is turned off
with it; ``ROBUST_VISION_PROGRAM_CACHE=off`` turns off only this one.

JAX provides no cache keyed before tracing (its own cache needs the lowered module), so this is
written here; the serialisation is JAX's own.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from robust_vision.io import atomic_write

FORMAT = 2  # 2: an entry's header holds its full key and the SHA-256 of its program
SUFFIX = ".jaxexport"
ENV_VAR = "ROBUST_VISION_PROGRAM_CACHE"
_PACKAGE_DIR = Path(__file__).resolve().parent
# JAX options that change what a function traces to.
_TRACE_OPTIONS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                  "jax_threefry_partitionable", "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion")


# --------------------------------------------------------------------------- the key


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def package_fingerprint() -> str:
    """sha256 over the path and content of every ``.py`` file of the robust_vision package."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_DIR)).encode())
        digest.update(_file_digest(str(path)).encode())
    return digest.hexdigest()


def source_fingerprint(objects: Iterable[Any]) -> list[str] | None:
    """The qualified name (and first line) of each of ``objects`` (classes, functions,
    partials), and content digests of their source files that lie outside the robust_vision
    package (its own files are in ``package_fingerprint``). None when such a file cannot be
    read: a program of that code is never kept."""
    out = set()
    for obj in objects:
        while hasattr(obj, "func"):  # functools.partial
            obj = obj.func
        target = obj if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj)
        # Which object of its file, too: two attacks of one file must not share a key.
        code = getattr(target, "__code__", None)
        out.add(f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"
                f":{getattr(code, 'co_firstlineno', '')}")
        try:
            path = inspect.getsourcefile(target)
        except TypeError:
            path = None
        if path is not None and not Path(path).resolve().is_relative_to(_PACKAGE_DIR):
            try:
                out.add(f"{path}:{_file_digest(path)}")
            except OSError:  # code typed at a prompt (``python -c``): nothing to vouch for it
                return None
    return sorted(out)


def array_digest(tree: Any) -> str:
    """sha256 of the values, shapes and dtypes of a pytree's array leaves (PRNG keys by their
    key data): for small closed-over state, such as a model's RNG streams, that is baked into a
    program as constants and so belongs in its key. Copies the leaves to the host."""
    digest = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            digest.update(str(leaf.dtype).encode())
            leaf = jax.random.key_data(leaf)
        value = np.asarray(leaf)
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _environment() -> dict:
    import flax
    import jaxlib
    import optax

    env = {name: str(getattr(jax.config, name, None)) for name in _TRACE_OPTIONS}
    env.update(jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, optax=optax.__version__,
               platform=jax.default_backend(), devices=jax.device_count())
    return env


def _sharding_text(sharding: Any) -> str:
    if sharding is None:
        return "host"
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return f"single:{next(iter(sharding.device_set)).id}"
    if isinstance(sharding, jax.sharding.NamedSharding):
        ids = [int(d.id) for d in np.asarray(sharding.mesh.devices).reshape(-1)]
        return f"named:{dict(sharding.mesh.shape)}:{sharding.spec}:{ids}"
    return repr(sharding)


def _leaf_signature(leaf: Any) -> tuple | None:
    """(shape, dtype, weak type, sharding or None) of an array leaf, hashable and cheap (it is
    taken on every call); None for anything else (a tracer, a Python number)."""
    if isinstance(leaf, jax.core.Tracer):
        return None
    if isinstance(leaf, jax.Array):
        return (leaf.shape, leaf.dtype, bool(getattr(leaf, "weak_type", False)), leaf.sharding)
    if isinstance(leaf, np.ndarray):
        return (leaf.shape, leaf.dtype, False, None)
    return None


def program_digest(name: str, key: Any, tree: Any, signatures: Sequence[tuple], donate_argnums: Sequence[int],
                   sources: Sequence[str] = ()) -> str:
    """The hex key of one program (see the module docstring for what it holds)."""
    record = {"format": FORMAT, "name": name, "key": key, "package": package_fingerprint(),
              "sources": list(sources), "environment": _environment(), "tree": str(tree),
              "leaves": [[str(shape), str(dtype), str(weak), _sharding_text(sharding)]
                         for shape, dtype, weak, sharding in signatures],
              "donate": sorted(donate_argnums)}
    text = json.dumps(record, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_directory() -> Path | None:
    """``<XLA compilation cache dir>/programs``, or None when the compilation cache is off, when
    ``ROBUST_VISION_PROGRAM_CACHE=off`` (the XLA cache alone stays on) or several processes run
    (their programs span hosts; each traces its own)."""
    from robust_vision.compile_cache import OFF_VALUES

    if os.environ.get(ENV_VAR, "on").strip().lower() in OFF_VALUES - {""}:
        return None
    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return None
    if jax.process_count() > 1:
        return None
    directory = Path(jax.config.jax_compilation_cache_dir) / "programs"
    if directory.exists():  # the XLA cache directory itself was checked by compile_cache
        from robust_vision.compile_cache import _warn_once, untrusted_reason

        reason = untrusted_reason(directory)
        if reason is not None:
            _warn_once(directory, reason)
            return None
    return directory


# --------------------------------------------------------------------------- pytree structure

# The stored program takes and returns flat tuples of arrays (jax.export can serialise those,
# not nnx.State, whose dicts have integer keys). The output structure is stored beside it in
# JSON: each node's type by name, its metadata with tuples tagged so it reads back equal.
# Custom types are resolved only among those of the call's own arguments and nnx's Variable
# and State types (never imported by name); anything else is a miss.


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v) for v in value]}
    raise TypeError(f"pytree metadata of type {type(value).__name__} is not serialisable")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        items = [_decode(v) for v in value.get("tuple", value.get("list", []))]
        return tuple(items) if "tuple" in value else items
    return value


_BUILTIN_NODES = {tuple: "tuple", list: "list", dict: "dict", type(None): "None"}


def _type_name(node_type: type) -> str:
    return _BUILTIN_NODES.get(node_type) or f"{node_type.__module__}.{node_type.__qualname__}"


def encode_tree(tree: Any) -> Any:
    """A PyTreeDef as JSON-able nested lists: None for a leaf, else [type name, metadata, children]."""
    data = tree.node_data()
    if data is None:
        return None
    node_type, aux = data
    return [_type_name(node_type), _encode(aux), [encode_tree(child) for child in tree.children()]]


def node_types(tree: Any) -> dict[str, type]:
    """{type name: type} of every node of a PyTreeDef."""
    out, stack = {}, [tree]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None:
            out[_type_name(data[0])] = data[0]
            stack.extend(node.children())
    return out


def _known_types() -> dict[str, type]:
    from flax import nnx

    todo, seen = [nnx.Variable, nnx.State], {}
    while todo:
        cls = todo.pop()
        if _type_name(cls) not in seen:
            seen[_type_name(cls)] = cls
            todo.extend(cls.__subclasses__())
    return {**seen, **{name: t for t, name in _BUILTIN_NODES.items()}}


def decode_tree(encoded: Any, types: dict[str, type]) -> Any:
    """The PyTreeDef of ``encode_tree``; a KeyError for a type not in ``types``."""
    leaf = jax.tree.structure(0)
    if encoded is None:
        return leaf
    name, aux, children = encoded
    node_data = (types[name], _decode(aux))
    return leaf.from_node_data_and_children(jax.tree_util.default_registry, node_data,
                                            [decode_tree(c, types) for c in children])


# --------------------------------------------------------------------------- the program


class CachedProgram:
    """``jax.jit(fn, donate_argnums)`` whose traced program is kept on disk (module docstring).

    Call it with positional pytree arguments of arrays. ``lower`` is the plain jit's."""

    def __init__(self, fn: Callable, *, name: str, key: Any, donate_argnums: Sequence[int] = (),
                 sources: Iterable[Any] = ()):
        self._fn = fn
        self._jit = jax.jit(fn, donate_argnums=tuple(donate_argnums))
        self._name = _safe_name(name)
        self._key, self._donate = key, tuple(donate_argnums)
        self._sources = source_fingerprint([fn, *sources])
        self._programs: dict[tuple, Callable] = {}
        self.hits = self.misses = 0  # disk reads and exports, for tests and benchmarks

    def lower(self, *args: Any):
        return self._jit.lower(*args)

    def __call__(self, *args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        signatures = tuple(_leaf_signature(leaf) for leaf in leaves)
        if self._sources is None or any(s is None for s in signatures):
            return self._jit(*args)
        # A stored program's outputs are committed to its devices; jit's are not when its inputs
        # are not. With one device that is the same; with several, uncommitted inputs take jit.
        if jax.device_count() > 1 and not all(getattr(leaf, "committed", False) for leaf in leaves):
            return self._jit(*args)
        program = self._programs.get((tree, signatures))
        if program is None:
            program = self._programs[(tree, signatures)] = self._program(args, tree, signatures)
        if program is self._jit:
            return self._jit(*args)
        flat, out_tree = program
        return jax.tree.unflatten(out_tree, flat(*leaves))

    def _program(self, args: tuple, tree: Any, signatures: tuple) -> Callable | tuple[Callable, Any]:
        """``self._jit``, or (the flat program, its output structure), read from disk or exported."""
        directory = cache_directory()
        if directory is None:
            return self._jit
        digest = program_digest(self._name, self._key, tree, signatures, self._donate, self._sources)
        path = directory / f"{self._name}-{digest[:40]}{SUFFIX}"
        unexportable = path.with_suffix(".unexportable")
        if unexportable.exists():
            return self._jit
        # The donated arguments' leaves, for the flat program.
        ends = np.cumsum([0] + [jax.tree.structure(a).num_leaves for a in args])
        donated = tuple(int(i) for a in self._donate for i in range(ends[a], ends[a + 1]))
        stored = _read(path, digest, tree, signatures)
        if stored is not None:
            self.hits += 1
            exported, out_tree = stored
        else:
            try:
                exported, out_tree = self._export(tree, args)
            except Exception:  # noqa: BLE001 - not exportable (host callbacks, ...): plain jit,
                try:  # and a marker, so later runs do not trace it twice
                    unexportable.parent.mkdir(parents=True, exist_ok=True)
                    unexportable.touch()
                except OSError:
                    pass
                return self._jit
            self.misses += 1
            _write(path, digest, exported, out_tree, tree)
        return jax.jit(exported.call, donate_argnums=donated), out_tree

    def _export(self, tree: Any, args: tuple) -> tuple[Any, Any]:
        """``fn`` exported as a function of the flat leaves, and its output structure."""
        fn, out_trees = self._fn, []

        def flat_fn(*leaves):
            out_leaves, out_tree = jax.tree.flatten(fn(*jax.tree.unflatten(tree, leaves)))
            out_trees.append(out_tree)
            return tuple(out_leaves)

        exported = jax.export.export(jax.jit(flat_fn))(*jax.tree.leaves(args))
        return exported, out_trees[-1]


def _read(path: Path, digest: str, tree: Any, signatures: tuple) -> tuple[Any, Any] | None:
    """(exported program, output structure) stored at ``path``, if it exists, was written under
    the key ``digest`` (the full hex key, not only the file name's prefix), its program's SHA-256
    matches its header, and it takes these arguments; None otherwise (a miss, rewritten). A file
    renamed, swapped with another entry or damaged is thus never run."""
    try:
        data = path.read_bytes()
        header = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header].decode())
        payload = data[8 + header:]
        if meta.get("format") != FORMAT or meta.get("key") != digest \
                or meta.get("sha256") != hashlib.sha256(payload).hexdigest():
            return None
        exported = jax.export.deserialize(bytearray(payload))
        out_tree = decode_tree(meta["out_tree"], {**_known_types(), **node_types(tree)})
    except Exception:  # noqa: BLE001 - missing, damaged or foreign: a miss
        return None
    # The key already pins the signature; this guards a damaged file or a hash collision.
    if [(tuple(a.shape), str(a.dtype)) for a in exported.in_avals] != [(tuple(s[0]), str(s[1])) for s in signatures]:
        return None
    return exported, out_tree


def _safe_name(name: str) -> str:
    """``name`` as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a reader never sees half a file."""
    if not path.parent.exists():  # private, like the cache directory above it
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, data, private=True)


def _write(path: Path, digest: str, exported: Any, out_tree: Any, in_tree: Any) -> None:
    """Store ``exported`` and its output structure at ``path`` atomically under the key
    ``digest``, with the SHA-256 of the program, only if the structure reads back equal as
    ``_read`` will read it (else every later run would miss)."""
    try:
        encoded = encode_tree(out_tree)
        if decode_tree(encoded, {**_known_types(), **node_types(in_tree)}) != out_tree:
            return
        payload = bytes(exported.serialize())
        meta = json.dumps({"format": FORMAT, "key": digest, "sha256": hashlib.sha256(payload).hexdigest(),
                           "out_tree": encoded}).encode()
        _write_atomic(path, len(meta).to_bytes(8, "little") + meta + payload)
    except Exception:  # noqa: BLE001 - the cache is an optimisation, never a reason to fail a run
        return


def cached_shapes(compute: Callable[[], Any], *, name: str, key: Any, sources: Iterable[Any] = ()) -> Any:
    """The pytree of ShapeDtypeStructs that ``compute()`` returns (a ``jax.eval_shape``, say),
    kept on disk under ``key`` as ``cached_jit`` keeps programs, so a second run does not call
    (trace) it. Shapes with PRNG-key or other extended dtypes are not kept."""
    directory = cache_directory()
    fingerprint = source_fingerprint([compute, *sources])
    if directory is None or fingerprint is None:
        return compute()
    name = _safe_name(name)
    empty = jax.tree.structure(())
    digest = program_digest(name, key, empty, (), (), fingerprint)
    path = directory / f"{name}-{digest[:40]}.shapes.json"
    types = _known_types()
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") != digest:  # renamed or swapped: a miss, rewritten
            raise KeyError("key")
        tree = decode_tree(stored["tree"], types)
        leaves = [jax.ShapeDtypeStruct(tuple(shape), jax.numpy.dtype(dtype), weak_type=weak)
                  for shape, dtype, weak in stored["leaves"]]
        return jax.tree.unflatten(tree, leaves)
    except Exception:  # noqa: BLE001 - missing or damaged: a miss
        pass
    shapes = compute()
    leaves, tree = jax.tree.flatten(shapes)
    try:
        if decode_tree(encode_tree(tree), types) != tree:
            return shapes
        record = {"key": digest, "tree": encode_tree(tree),
                  "leaves": [[list(s.shape), np.dtype(s.dtype).name, bool(s.weak_type)] for s in leaves]}
        _write_atomic(path, json.dumps(record).encode())
    except Exception:  # noqa: BLE001 - extended dtypes, unwritable directory: not kept
        pass
    return shapes


def logits_program(fn: Callable, logits_fn: Callable, *, name: str, key: Any = None,
                   sources: Iterable[Any] = ()) -> Callable:
    """Jitted ``(*args) -> fn(logits_fn, *args)``.

    When ``logits_fn`` is a model's forward bound to its variables (``runs.loading.BoundLogits``:
    a ``forward`` with a ``program_key``, and ``variables``), the program takes the variables as
    an argument, not as constants, and is kept on disk under the forward's key, ``key`` (what
    else ``fn`` closes over, JSON-able) and ``sources``. Any other function: plain jit, with
    ``logits_fn`` (and its weights) closed over."""
    forward, variables = getattr(logits_fn, "forward", None), getattr(logits_fn, "variables", None)
    program_key = getattr(forward, "program_key", None)
    if program_key is None or variables is None:
        return jax.jit(functools.partial(fn, logits_fn))

    def bound(variables, *args):
        return fn(lambda images: forward(variables, images), *args)

    program = model_jit(bound, program_key, name=name, key=key, sources=[fn, *sources])
    return functools.partial(program, variables)


def model_jit(fn: Callable, program_key: Any, *, name: str, key: Any = None, donate_argnums: Sequence[int] = (),
              sources: Iterable[Any] = ()) -> CachedProgram | Callable:
    """``cached_jit`` of a program that closes over a model: kept on disk under the model's
    ``program_key`` (``models.state.ProgramKey``: ``.key``, ``.sources``) and ``key`` (what
    else ``fn`` closes over); plain jit when ``program_key`` is None."""
    if program_key is None:
        return jax.jit(fn, donate_argnums=tuple(donate_argnums))
    return cached_jit(fn, name=name, key={"model": program_key.key, "fn": key}, donate_argnums=donate_argnums,
                      sources=[*program_key.sources, *sources])


def cached_jit(fn: Callable, *, name: str, key: Any, donate_argnums: Sequence[int] = (),
               sources: Iterable[Any] = ()) -> CachedProgram | Callable:
    """``jax.jit(fn, donate_argnums=...)`` with its traced program kept on disk under ``key``
    (a JSON-able value naming everything ``fn`` closes over). ``key=None``: plain jit.
    ``sources``: outside objects whose source files the trace depends on."""
    if key is None:
        return jax.jit(fn, donate_argnums=tuple(donate_argnums))
    return CachedProgram(fn, name=name, key=key, donate_argnums=donate_argnums, sources=sources)

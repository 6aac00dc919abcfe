"""Cost of a PGD attack relative to plain forward-backward passes of the same model.

Unit: one forward+backward (fb) unit = the time of ONE call of a jitted function returning the
input gradient of the loss on the same batch (min over interleaved repeats). PGD-k with a random
start makes exactly k forward-backward passes (no clean pass), so

    cost(PGD-k) = t(PGD-k) / (k * t(one jitted forward-backward call))   [fb units]

should be close to 1: above 1 is overhead of the attack loop (loop control, projections, the
random start), below 1 means one program did better than k separate calls (no dispatch).
benchmarks/compile_time.py reports the same unit.

Variants, all jitted and warmed up, timed round-robin ``--repeats`` times (min, and median):
k dependent forward-backward passes inside one rolled ``fori_loop`` (no attack: the rolled-loop
baseline of this backend); PGD-k with the step count static and the loop rolled (``unroll=1``);
with the step count traced (one program for every k), rolled and partially unrolled
(``unroll=2, 4``: an outer loop over chunks of unrolled steps, ``attacks._common.loop``); and
fully unrolled (static k, ``unroll=True``). Model: a small CNN in Flax NNX (3 conv layers on
32x32x3, global pooling, linear head) built with the models' convolution
(``models.conv.conv_layer``, as every model of the registry), batch 128 by default.
``--compare-lax-conv`` adds the unit, rolled and unrolled PGD of the same CNN with plain
``nnx.Conv`` (JAX's own backward), each in units of its own forward-backward call.

    python benchmarks/attack_cost.py [--batch 128] [--steps 20] [--repeats 5] [--compare-lax-conv]

``--autoattack`` instead prints the cost of each AutoAttack attack (APGD-CE, APGD-DLR, APGD-T,
FAB-T, Square) in forward+backward units: counted from the algorithm (a forward-only pass counted
as measured, t(forward) / t(forward-backward)) and measured (t(attack) / t(one forward-backward
pass), same batch, min over interleaved repeats), at a small budget (``--aa-steps`` APGD / FAB
iterations, ``--aa-queries`` Square queries) and scaled linearly to the reference budget (APGD
100 iterations, 9 targets, FAB 100 iterations, Square 5,000 queries). Then the full AutoAttack
cost per example at the reference budget: the worst case (a point robust to every stage runs all
of them) and the case of a point APGD-CE already breaks.

    python benchmarks/attack_cost.py --autoattack [--batch 32] [--aa-steps 10] [--aa-queries 200]

``--conv-layout`` tests the cause of the rolled-loop penalty on XLA:CPU with a two-layer plain
``lax`` CNN: k dependent input gradients in a rolled ``fori_loop``, once with JAX's own backward
convolution (kernel flipped and transposed inside the loop body, ``..._01oi``) and once with a
``custom_vjp`` whose backward convolution takes a kernel flipped and transposed to HWIO once,
outside the loop (same gradient, checked bit for bit), and once with the models' convolution
(``models.conv.conv_general_dilated``: the same idea, the flip made inside the body behind an
optimisation barrier), all in fb units.

    python benchmarks/attack_cost.py --conv-layout [--batch 32] [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from robust_vision.attacks import pgd
from robust_vision.models.conv import conv_layer


class SmallCNN(nnx.Module):
    """3 conv layers, global pooling, linear head. ``lax_conv``: plain ``nnx.Conv`` (JAX's own
    backward) instead of the models' ``models.conv.conv_layer`` (the default: what users get)."""

    def __init__(self, n_classes: int = 10, *, rngs: nnx.Rngs, lax_conv: bool = False):
        layer = nnx.Conv if lax_conv else conv_layer
        self.c1 = layer(3, 32, (3, 3), rngs=rngs)
        self.c2 = layer(32, 64, (3, 3), strides=2, rngs=rngs)
        self.c3 = layer(64, 128, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(128, n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.c1(x))
        x = jax.nn.relu(self.c2(x))
        x = jax.nn.relu(self.c3(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def _interleaved_times(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds of each function, measured round-robin so that a change in
    machine load (other jobs) hits every variant alike; the min is the least disturbed."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--autoattack", action="store_true", help="cost of the AutoAttack attacks instead")
    parser.add_argument("--aa-steps", type=int, default=10)
    parser.add_argument("--aa-queries", type=int, default=200)
    parser.add_argument("--n-targets", type=int, default=9)
    parser.add_argument("--conv-layout", action="store_true", help="the rolled-loop convolution-layout experiment")
    parser.add_argument("--compare-lax-conv", action="store_true",
                        help="also time the fb unit, PGD rolled and unrolled of the model with plain nnx.Conv")
    args = parser.parse_args()
    if args.autoattack:
        return autoattack_costs(args)
    if args.conv_layout:
        return conv_layout(args)

    x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    key = jax.random.key(3)
    k = args.steps
    fns, labels = _pgd_variants(SmallCNN(rngs=nnx.Rngs(0)), x, y, key, args, "")
    if args.compare_lax_conv:
        lax_fns, lax_labels = _pgd_variants(SmallCNN(rngs=nnx.Rngs(0), lax_conv=True), x, y, key, args, "lax_")
        keep = ("lax_fb", "lax_traced", "lax_unrolled")
        fns.update({n: f for n, f in lax_fns.items() if n in keep})
        labels.update({n: f"[plain nnx.Conv] {lax_labels[n]}" for n in keep})
    for fn in fns.values():  # compile
        jax.block_until_ready(fn())
    t = _interleaved_times(fns, args.repeats)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {args.batch}, 32x32x3, "
          f"{args.repeats} interleaved repeats; ms min (median); fb units = t / ({k} x t(one call)) of the same "
          f"model (models.conv unless marked [plain nnx.Conv])")
    for name, label in labels.items():
        unit = "lax_fb" if name.startswith("lax_") else "fb"
        passes = 1 if name == unit else k
        print(f"{label:52s} {1e3 * t[name][0]:9.1f} ({1e3 * t[name][1]:7.1f})   "
              f"{t[name][0] / (passes * t[unit][0]):5.3f} fb units (medians {t[name][1] / (passes * t[unit][1]):.3f})")
    if args.compare_lax_conv:
        print(f"one forward-backward call, models.conv / plain nnx.Conv: {t['fb'][0] / t['lax_fb'][0]:.3f} (min), "
              f"{t['fb'][1] / t['lax_fb'][1]:.3f} (medians)")


def _pgd_variants(model: nnx.Module, x: jax.Array, y: jax.Array, key: jax.Array, args, prefix: str):
    """The timed variants of one model: {name: thunk}, {name: label}."""
    graphdef, state = nnx.split(model)
    k = args.steps

    def logits_fn_of(state):
        model = nnx.merge(graphdef, state)
        return lambda images: model(images)

    def input_grad(state, x, y):
        f = logits_fn_of(state)
        return jax.grad(lambda z: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(f(z), y)))(x)

    fb = jax.jit(input_grad)

    @jax.jit
    def fb_loop(state, x, y):
        # Dependent passes (each input depends on the last gradient) so XLA cannot merge them.
        return jax.lax.fori_loop(0, k, lambda i, z: z + 1e-6 * jnp.sign(input_grad(state, z, y)), x)

    def run(state, x, y, key, eps, steps, unroll):
        return pgd(logits_fn_of(state), x, y, key, eps, norm="linf", steps=steps, unroll=unroll)

    attack = jax.jit(run, static_argnames=("unroll",))  # steps an int32 array: traced
    static_attack = jax.jit(functools.partial(run, steps=k), static_argnames=("unroll",))
    traced_k = jnp.int32(k)
    eps = jnp.float32(args.eps)
    fns = {
        "fb": lambda: fb(state, x, y),
        "loop": lambda: fb_loop(state, x, y),
        "static": lambda: static_attack(state, x, y, key, eps, unroll=1),
        "traced": lambda: attack(state, x, y, key, eps, traced_k, 1),
        "traced_u2": lambda: attack(state, x, y, key, eps, traced_k, 2),
        "traced_u4": lambda: attack(state, x, y, key, eps, traced_k, 4),
        "unrolled": lambda: static_attack(state, x, y, key, eps, unroll=True),
    }
    labels = {"fb": "one jitted forward-backward call (the unit)",
              "loop": f"{k} forward-backward passes, one rolled fori_loop",
              "static": f"PGD-{k}, static steps, rolled (unroll=1)",
              "traced": f"PGD-{k}, traced steps, rolled (default)",
              "traced_u2": f"PGD-{k}, traced steps, unroll=2",
              "traced_u4": f"PGD-{k}, traced steps, unroll=4",
              "unrolled": f"PGD-{k}, static steps, unroll=True"}
    return {prefix + n: f for n, f in fns.items()}, {prefix + n: lab for n, lab in labels.items()}


def autoattack_costs(args) -> None:
    from robust_vision.attacks.apgd_t import apgd_dlr, apgd_t
    from robust_vision.attacks.autoattack import REFERENCE_BUDGET
    from robust_vision.attacks.fab import fab_t
    from robust_vision.attacks.gradient import apgd_ce
    from robust_vision.attacks.square import square

    graphdef, state = nnx.split(SmallCNN(rngs=nnx.Rngs(0)))
    model = nnx.merge(graphdef, state)
    x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
    y = jnp.argmax(model(x), -1)  # labels = predictions: every point starts correctly classified
    key = jax.random.key(3)
    k, q, t = args.aa_steps, args.aa_queries, args.n_targets

    def logits_fn(images):
        return model(images)

    fb = jax.jit(lambda x, y: jax.grad(lambda z: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(z), y)))(x))
    fwd = jax.jit(logits_fn)
    attacks = {
        "apgd-ce": (jax.jit(lambda x, y: apgd_ce(logits_fn, x, y, key, args.eps, steps=k)), "fb", k + 1, 0),
        "apgd-dlr": (jax.jit(lambda x, y: apgd_dlr(logits_fn, x, y, key, args.eps, steps=k)), "fb", k + 1, 0),
        "apgd-t": (jax.jit(lambda x, y: apgd_t(logits_fn, x, y, key, args.eps, steps=k, n_targets=t)),
                   "fb", t * (k + 1), t + 1),
        "fab-t": (jax.jit(lambda x, y: fab_t(logits_fn, x, y, key, args.eps, steps=k, n_targets=t)),
                  "fb", t * k, t * k + 1),
        "square": (jax.jit(lambda x, y: square(logits_fn, x, y, key, args.eps, n_queries=q)), "f", 0, q + 1),
    }
    fns = {"fb": lambda: fb(x, y), "f": lambda: fwd(x)}
    fns.update({name: (lambda f=f: f(x, y)) for name, (f, *_rest) in attacks.items()})
    for fn in fns.values():  # compile
        jax.block_until_ready(fn())
    times = _interleaved_times(fns, args.repeats)
    t_fb, t_f = times["fb"][0], times["f"][0]
    f_unit = t_f / t_fb
    ref = REFERENCE_BUDGET
    scale = {"apgd-ce": (ref["apgd_steps"] + 1) / (k + 1), "apgd-dlr": (ref["apgd_steps"] + 1) / (k + 1),
             "apgd-t": ref["n_targets"] * (ref["apgd_steps"] + 1) / (t * (k + 1)),
             "fab-t": ref["n_targets"] * ref["fab_steps"] / (t * k), "square": ref["square_queries"] / (q + 1)}
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), SmallCNN 32x32x3, batch {args.batch}, "
          f"{args.repeats} interleaved repeats (min); one forward-backward pass {1e3 * t_fb:.2f} ms, one forward "
          f"{1e3 * t_f:.2f} ms = {f_unit:.2f} fb units")
    print(f"budget measured: APGD/FAB {k} iterations, {t} targets, Square {q} queries; reference: APGD "
          f"{ref['apgd_steps']}, FAB {ref['fab_steps']}, {ref['n_targets']} targets, Square {ref['square_queries']}")
    print(f"{'attack':10s} {'fb':>6s} {'fwd':>6s} {'counted':>9s} {'measured':>9s} {'ratio':>6s} "
          f"{'ref counted':>12s} {'ref measured':>13s}")
    per_example_ref = {}
    for name, (_, _, n_fb, n_f) in attacks.items():
        counted = n_fb + n_f * f_unit
        measured = times[name][0] / t_fb
        per_example_ref[name] = (counted * scale[name], measured * scale[name])
        print(f"{name:10s} {n_fb:6d} {n_f:6d} {counted:9.1f} {measured:9.1f} {measured / counted:6.2f} "
              f"{counted * scale[name]:12.0f} {measured * scale[name]:13.0f}")
    stages = ("apgd-ce", "apgd-t", "fab-t", "square")
    worst = [sum(per_example_ref[s][i] for s in stages) for i in (0, 1)]
    print(f"AutoAttack standard, reference budget, per example, in forward-backward passes of this model: "
          f"worst case (robust to every stage) counted {worst[0]:.0f}, measured {worst[1]:.0f} "
          f"(= {worst[1] * t_fb / args.batch * 1e3:.1f} ms per example here); a point APGD-CE breaks: "
          f"{per_example_ref['apgd-ce'][0]:.0f} counted, at most (the loop runs all iterations)")


def conv_layout(args) -> None:
    from jax import lax

    from robust_vision.models.conv import conv_general_dilated

    dn = ("NHWC", "HWIO", "NHWC")
    k1, k2 = jax.random.split(jax.random.key(0))
    ws = (0.1 * jax.random.normal(k1, (3, 3, 3, 32)), 0.1 * jax.random.normal(k2, (3, 3, 32, 64)))
    x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3))
    k = args.steps

    def conv(z, w):
        return lax.conv_general_dilated(z, w, (1, 1), "SAME", dimension_numbers=dn)

    def conv_hoisted(z, w, w_back):  # w_back: w flipped in space, in/out swapped (HWIO), made outside the loop
        @jax.custom_vjp
        def c(z):
            return conv(z, w)
        c.defvjp(lambda z: (conv(z, w), None), lambda _, dy: (conv(dy, w_back),))
        return c(z)

    def loss(z, layer):
        h = jax.nn.relu(layer(z, 0))
        return jnp.sum(jnp.mean(jax.nn.relu(layer(h, 1)), axis=(1, 2)) ** 2)

    def grad_plain(z):
        return jax.grad(loss)(z, lambda h, i: conv(h, ws[i]))

    def grad_hoisted(z, w_back):
        return jax.grad(loss)(z, lambda h, i: conv_hoisted(h, ws[i], w_back[i]))

    def backs():
        return lax.optimization_barrier(tuple(jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2) for w in ws))

    def grad_module(z):  # the models' convolution (models/conv.py): the kernel flip inside the body
        return jax.grad(loss)(z, lambda h, i: conv_general_dilated(h, ws[i], (1, 1), "SAME", dimension_numbers=dn))

    fb = jax.jit(grad_plain)
    plain = jax.jit(lambda x: jax.lax.fori_loop(0, k, lambda i, z: z + 1e-6 * jnp.sign(grad_plain(z)), x))
    hoisted = jax.jit(lambda x: jax.lax.fori_loop(
        0, k, lambda i, z, wb=backs(): z + 1e-6 * jnp.sign(grad_hoisted(z, wb)), x))
    module = jax.jit(lambda x: jax.lax.fori_loop(0, k, lambda i, z: z + 1e-6 * jnp.sign(grad_module(z)), x))
    same = bool(jnp.array_equal(jax.jit(lambda z: grad_hoisted(z, backs()))(x), fb(x)))
    same_module = bool(jnp.array_equal(jax.jit(grad_module)(x), fb(x)))
    fns = {"fb": lambda: fb(x), "plain": lambda: plain(x), "hoisted": lambda: hoisted(x),
           "module": lambda: module(x)}
    for fn in fns.values():
        jax.block_until_ready(fn())
    t = _interleaved_times(fns, args.repeats)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), 2-conv CNN 32x32x3, batch {args.batch}, "
          f"{k} steps, {args.repeats} interleaved repeats (min); gradients identical: {same} (hoisted), "
          f"{same_module} (models.conv)")
    print(f"rolled fori_loop, JAX's backward convolution:              {t['plain'][0] / (k * t['fb'][0]):.3f} fb units")
    print(f"rolled fori_loop, backward kernel in HWIO made outside it: {t['hoisted'][0] / (k * t['fb'][0]):.3f} fb units")
    print(f"rolled fori_loop, models.conv.conv_general_dilated:        {t['module'][0] / (k * t['fb'][0]):.3f} fb units")


if __name__ == "__main__":
    main()

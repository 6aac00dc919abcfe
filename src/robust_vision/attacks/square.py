"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), Linf and L2, as AutoAttack runs it.

Score-based and gradient-free: only forward passes of ``logits_fn`` are used (no ``jax.grad``
anywhere in this module), so gradient masking does not stop it. Random search on the margin
loss  m = z_y - max_{j != y} z_j : each query changes one random square window of side s and
keeps the change if m decreased (or the point became misclassified). s shrinks with the
iteration as the reference's ``p_selection`` schedule (the fraction p of pixels changed is
p_init, halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 iterations, the
schedule rescaled to ``n_queries``). Points already misclassified stop changing.

Linf: start from vertical stripes x + eps * (+-1 per column and channel); a query sets the window
to x_best + 2 eps * (+-1 per channel), then projects to the ball and [0, 1].
L2: start from a 5 x 5 grid of "pseudo-Gaussian" blocks (two opposite-sign nested-square
patterns), rescaled to norm eps; a query moves the mass of a second window into the first one
with a new pseudo-Gaussian pattern, keeping ||delta||_2 = eps (before clipping to [0, 1]).

Differences from the reference, by design: the window position, the colours and the L2
pattern's orientation are drawn per example (the reference draws one window per iteration for
the whole batch); the loop has a fixed length (``n_queries - 1`` iterations, one forward each,
plus one for the start), examples that are fooled are masked instead of removed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robust_vision.attacks._common import (LogitsFn, bwhere, check_count, check_inputs, check_norm, count, l2_norm,
                                          loop_until)
from robust_vision.metrics import logit_margin

# p_selection: iteration thresholds (of 10,000) after which p is divided by 2, 4, ..., 512.
_P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i: jax.Array, n_queries: int | jax.Array, p_init: float) -> jax.Array:
    """Fraction of pixels a query changes at iteration ``i`` (traced int), as the reference's
    ``p_selection`` with ``rescale_schedule=True``; ``n_queries`` static or traced."""
    it = jnp.floor(i.astype(jnp.float32) / n_queries * 10000.0).astype(jnp.int32)
    halvings = sum((it > t).astype(jnp.int32) for t in _P_THRESHOLDS)
    return p_init / jnp.exp2(halvings.astype(jnp.float32))


def _margin(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    return logit_margin(logits_fn(x).astype(jnp.float32), y)


def _accept(logits_fn: LogitsFn, x_new: jax.Array, y: jax.Array, x_best: jax.Array, margin_best: jax.Array):
    """One Square step's acceptance: a proposal ``x_new`` replaces ``x_best`` where the example
    is not yet broken (margin > 0) and the proposal lowers the margin or breaks it. Returns the
    scan carry (x_best, margin_best) and the per-example margins (B,) as the step's output."""
    margin_new = _margin(logits_fn, x_new, y)
    active = margin_best > 0.0
    accept = active & ((margin_new < margin_best) | (margin_new <= 0.0))
    x_best = bwhere(accept, x_new, x_best)
    margin_best = jnp.where(accept, margin_new, margin_best)
    return (x_best, margin_best), margin_best


def _window_mask(h: int, w: int, vh: jax.Array, vw: jax.Array, s: jax.Array) -> jax.Array:
    """(B, H, W, 1) bool: the s x s window with top-left corner (vh, vw) per example."""
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]
    vh, vw = vh[:, None, None, None], vw[:, None, None, None]
    return (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)


def _random_corner(key: jax.Array, b: int, h: int, w: int, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-left corners uniform in [0, h - s) x [0, w - s) (torch.randint's exclusive high, as the
    reference; at least one position)."""
    kh, kw = jax.random.split(key)
    vh = jax.random.randint(kh, (b,), 0, jnp.maximum(h - s, 1))
    vw = jax.random.randint(kw, (b,), 0, jnp.maximum(w - s, 1))
    return vh, vw


def _signs(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(jnp.float32)


def _pseudo_gaussian(h: int, w: int, vh: jax.Array, vw: jax.Array, s: jax.Array, transpose: jax.Array) -> jax.Array:
    """The reference's ``meta_pseudo_gaussian_pert(s)`` placed at (vh, vw), (B, H, W, 1), unit L2 norm.

    Its ``eta_rectangles(a, b)`` adds 1/(k+1)^2 on nested squares of half-width k around
    (a//2, b//2), k = 0 .. max(a//2, b//2); the value at a cell of Chebyshev distance m from the
    centre is therefore sum_{k=m}^{K-1} 1/(k+1)^2 (computed from a cumulative table). The top
    s//2 rows hold +eta(s//2, s), the rest -eta(s - s//2, s), each half normalised first.
    """
    b = vh.shape[0]
    size = max(h, w) + 2
    cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.arange(1, size + 1, dtype=jnp.float32) ** 2)])
    rows = jnp.arange(h)[None, :, None] - vh[:, None, None]   # local coordinates (B, H, W)
    cols = jnp.arange(w)[None, None, :] - vw[:, None, None]
    t = transpose[:, None, None]
    i, j = jnp.where(t, cols, rows), jnp.where(t, rows, cols)
    s3 = s
    inside = (i >= 0) & (i < s3) & (j >= 0) & (j < s3)
    half = s3 // 2

    def rect(i_loc, a):
        big_k = jnp.maximum(a // 2 + 1, s3 // 2 + 1)
        m = jnp.maximum(jnp.abs(i_loc - a // 2), jnp.abs(j - s3 // 2))
        return jnp.where(m < big_k, cum[big_k] - cum[jnp.minimum(m, big_k)], 0.0)

    top = jnp.where(inside & (i < half), rect(i, half), 0.0)
    bottom = jnp.where(inside & (i >= half), rect(i - half, s3 - half), 0.0)

    def unit(v):
        return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True)), 1e-12)

    pattern = unit(top) - unit(bottom)
    return unit(pattern).reshape(b, h, w, 1)


def _square_linf(logits_fn, x, y, key, eps, n_queries, p_init):
    """(initial (x_best, margin_best), step(carry, i) -> (carry, margin_best)) of the Linf search."""
    b, h, w, c = x.shape
    n_features = h * w * c
    k_init, k_loop = jax.random.split(key)
    x_best = jnp.clip(x + eps * _signs(k_init, (b, 1, w, c)), 0.0, 1.0)
    margin0 = _margin(logits_fn, x_best, y)

    def step(carry, i):
        x_best, margin_best = carry
        ki = jax.random.fold_in(k_loop, i)
        k_pos, k_col = jax.random.split(ki)
        p = p_schedule(i, n_queries, p_init)
        s = jnp.clip(jnp.round(jnp.sqrt(p * n_features / c)).astype(jnp.int32), 1, min(h, w) - 1)
        vh, vw = _random_corner(k_pos, b, h, w, s)
        mask = _window_mask(h, w, vh, vw, s)
        x_new = jnp.where(mask, x_best + 2.0 * eps * _signs(k_col, (b, 1, 1, c)), x_best)
        x_new = jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)
        return _accept(logits_fn, x_new, y, x_best, margin_best)

    return (x_best, margin0), step


def _l2_normalize(delta: jax.Array) -> jax.Array:
    return delta / jnp.maximum(l2_norm(delta), 1e-12)


def _square_l2(logits_fn, x, y, key, eps, n_queries, p_init):
    """As ``_square_linf``, for the L2 search."""
    b, h, w, c = x.shape
    if min(h, w) < 5:
        raise ValueError(f"square (l2) needs images of at least 5 x 5 pixels, got {h} x {w}.")
    n_features = h * w * c
    k_init, k_loop = jax.random.split(key)
    # Start: a grid of pseudo-Gaussian blocks of side h // 5 with random signs per block and
    # channel, each block transposed at random (built at once: one s0 x s0 pattern, tiled).
    s0 = h // 5
    sp = (h - s0 * 5) // 2
    nh, nw = (h - sp) // s0, (w - sp) // s0
    k_t, k_s = jax.random.split(k_init)
    one = _pseudo_gaussian(s0, s0, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32), jnp.int32(s0),
                           jnp.zeros((1,), bool))[0, :, :, 0]                               # (s0, s0)
    flip = jax.random.bernoulli(k_t, 0.5, (nh, nw))
    blocks = jnp.where(flip[:, :, None, None], one.T[None, None], one[None, None])         # (nh, nw, s0, s0)
    grid = blocks.transpose(0, 2, 1, 3).reshape(nh * s0, nw * s0)
    signs = jnp.repeat(jnp.repeat(_signs(k_s, (b, nh, nw, c)), s0, axis=1), s0, axis=2)   # (B, nh*s0, nw*s0, C)
    tiled = grid[None, :, :, None] * signs
    delta = jnp.zeros_like(x).at[:, sp:sp + nh * s0, sp:sp + nw * s0, :].set(tiled)
    x_best = jnp.clip(x + _l2_normalize(delta) * eps, 0.0, 1.0)
    margin0 = _margin(logits_fn, x_best, y)

    def step(carry, i):
        x_best, margin_best = carry
        ki = jax.random.fold_in(k_loop, i)
        k_pos1, k_pos2, k_t, k_s = jax.random.split(ki, 4)
        p = p_schedule(i, n_queries, p_init)
        s = jnp.maximum(jnp.round(jnp.sqrt(p * n_features / c)).astype(jnp.int32), 3)
        s = jnp.minimum(s + (s % 2 == 0), min(h, w) - 1)
        vh, vw = _random_corner(k_pos1, b, h, w, s)
        vh2, vw2 = _random_corner(k_pos2, b, h, w, s)
        m1 = _window_mask(h, w, vh, vw, s)
        m2 = _window_mask(h, w, vh2, vw2, s)
        delta = x_best - x
        norms_window_1 = jnp.sqrt(jnp.sum(jnp.square(delta * m1), axis=(1, 2), keepdims=True))   # (B,1,1,C)
        norms_image = l2_norm(delta)                                                             # (B,1,1,1)
        norms_windows = jnp.sqrt(jnp.sum(jnp.square(delta * (m1 | m2)), axis=(1, 2), keepdims=True))
        transpose = jax.random.bernoulli(k_t, 0.5, (b,))
        new = _pseudo_gaussian(h, w, vh, vw, s, transpose) * _signs(k_s, (b, 1, 1, c))
        new = new + jnp.where(m1, delta, 0.0) / (1e-12 + norms_window_1)
        new = new / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(new), axis=(1, 2), keepdims=True)), 1e-12)
        new = new * jnp.sqrt(jnp.maximum(eps ** 2 - norms_image ** 2, 0.0) / c + norms_windows ** 2)
        delta = jnp.where(m2, 0.0, delta)
        delta = jnp.where(m1, new, delta)
        x_new = jnp.clip(x + _l2_normalize(delta) * eps, 0.0, 1.0)
        return _accept(logits_fn, x_new, y, x_best, margin_best)

    return (x_best, margin0), step


def square_trace(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
                 *, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8) -> tuple[jax.Array, jax.Array]:
    """Square attack with its search history: (x_adv (B, H, W, C), best margin after each query,
    (n_queries, B)). Points already misclassified at x are returned unchanged (margin history of
    the clean point)."""
    check_inputs(x, y, eps, name="square")
    check_norm(norm, "square")
    check_count(n_queries, "square", "n_queries", 1)
    n_queries = int(n_queries)  # static: the history has n_queries rows
    run = _square_linf if norm == "linf" else _square_l2
    (x_best, margin0), step = run(logits_fn, x, y, key, eps, n_queries, p_init)
    (x_best, _), history = jax.lax.scan(step, (x_best, margin0), jnp.arange(1, n_queries))
    history = jnp.concatenate([margin0[None], history])
    clean_margin = _margin(logits_fn, x, y)
    fooled0 = clean_margin <= 0.0
    return bwhere(fooled0, x, x_best), jnp.where(fooled0[None], clean_margin[None], history)


def square(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, eps: float | jax.Array,
           *, norm: str = "linf", n_queries: int | jax.Array = 5000, p_init: float = 0.8,
           first_query: int | jax.Array = 1, stop_query: int | jax.Array | None = None,
           x_start: jax.Array | None = None) -> jax.Array:
    """Square attack, eps-bounded (Linf or L2), ``n_queries`` forward passes per example (default
    5000 and p_init = 0.8, AutoAttack's standard setting; a Python int or a traced int; the queries
    stop early once every example is misclassified, as the reference's loop does). Returns
    (B, H, W, C) in [0, 1] inside the ball; eps = 0 returns x exactly. Same iterates as
    ``square_trace``, without the history.

    Resuming (``run_autoattack`` runs the queries in chunks, dropping fooled points in between):
    ``x_start`` (B, H, W, C), the iterate after query ``first_query - 1`` of a search with the same
    key and ``n_queries``, continues it with queries [first_query, stop_query) (``stop_query`` None
    = ``n_queries``); chunks run one after the other give the iterates of one call, because a
    query's randomness and window size depend only on (key, query index, n_queries) and the best
    margin is the margin of ``x_start``. Without ``x_start``, or with ``first_query`` <= 1 (then
    ``x_start`` is ignored), the search starts at query 0.
    """
    check_inputs(x, y, eps, name="square")
    check_norm(norm, "square")
    check_count(n_queries, "square", "n_queries", 1)
    n_queries = count(n_queries)
    run = _square_linf if norm == "linf" else _square_l2
    (x_best, margin0), step = run(logits_fn, x, y, key, eps, n_queries, p_init)
    if x_start is not None:  # from query 1 on, x_start is the iterate; at query <= 1 the fresh start
        resumed = jnp.asarray(first_query) > 1  # (one program for every chunk: first_query is traced)
        x_best = jnp.where(resumed, x_start, x_best)
        margin0 = jnp.where(resumed, _margin(logits_fn, x_start, y), margin0)
    # Fooled points stop changing, so once all are fooled the remaining queries change nothing.
    x_best, _ = loop_until(first_query, n_queries if stop_query is None else stop_query,
                           lambda i, carry: step(carry, i)[0], (x_best, margin0), lambda carry: jnp.all(carry[1] <= 0.0))
    fooled0 = _margin(logits_fn, x, y) <= 0.0
    return bwhere(fooled0, x, x_best)

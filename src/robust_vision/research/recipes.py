"""``robust-vision-research run --experiment recipes``: what makes a model robust, measured.

The same model (config ``model``) on the same data (config ``data``) is trained once per recipe
and seed by :func:`robust_vision.training.trainer.train` (each recipe is a set of
``training.*`` overrides, nothing else changes) and evaluated on the test split by the
project's evaluators:

* clean accuracy, accuracy under the seed's four noise types (mean over levels 0.1 .. 0.5),
  clean ECE and the mean SNR over that noisy grid (geometric mean of the per-condition SNRs):
  :func:`robust_vision.evaluation.robustness.evaluate_robustness`;
* corruption error: mean top-1 error over the 15 ImageNet-C corruptions at the configured
  severities, CIFAR-scale parameters (``robust_vision.corruptions``), on corrupted test images
  made once per seed and shared by every recipe (:func:`corrupted_test_set`);
* PGD accuracy (Linf, ``attacks.gradient.pgd``, rolled loop) at two eps, on
  ``attack_examples`` test examples at evenly spaced positions (all of them by default).

The corruption and PGD evaluators are module-level jitted functions with the model function
static and its weights traced, so one compiled program serves every recipe and seed of the
same model structure (the suite's functions take a closure over the weights and compiled once
per model: most of the evaluation time in the issue-13 profile).

Every number is the mean over seeds with a bootstrap 90% interval over seeds
(:func:`robust_vision.research.bootstrap.bootstrap_interval`). Recipes are ranked by the mean of
the noise accuracy, 1 - corruption error and the PGD accuracy at the larger eps (all in [0, 1]);
the table shows each component, so any other ranking can be read off it.

The two-seed stability of the ranking (:func:`seed_stability`: Spearman rank correlation of the
per-seed scores, same top / bottom recipe) is printed under the table.

Outputs in OUT: recipes.{csv,md} (ranked table), recipes_per_seed.csv, recipes.json,
figures/recipes.{png,pdf}, runs/recipes/seed<S>/<recipe>/ (run directories).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from robust_vision.config import ConfigError, config_from_dict

__all__ = ["RECIPES", "Recipe", "RECIPE_COLUMNS", "corrupted_test_set", "load_recipe_settings", "rank_recipes",
           "recipe_config", "run_recipes", "seed_stability"]


@dataclass(frozen=True)
class Recipe:
    key: str
    name: str
    training: dict  # training.* overrides of the base config


RECIPES: tuple[Recipe, ...] = (
    Recipe("ce", "Cross-entropy", {"loss_type": "cross_entropy"}),
    Recipe("margin_1", "Margin lambda=1", {"loss_type": "margin", "margin_lambda": 1.0}),
    Recipe("margin_10", "Margin lambda=10", {"loss_type": "margin", "margin_lambda": 10.0}),
    Recipe("label_smoothing", "Label smoothing 0.1", {"loss_type": "label_smoothing", "label_smoothing": 0.1}),
    Recipe("gauss_0.1", "Gaussian aug. sigma=0.1", {"noise_augment_std": 0.1}),
    Recipe("gauss_0.25", "Gaussian aug. sigma=0.25", {"noise_augment_std": 0.25}),
    Recipe("augmix", "AugMix + JS", {"augmix": {"enabled": True}}),
    Recipe("pgd_at", "PGD-AT", {"adversarial": {"method": "pgd"}}),
    Recipe("trades", "TRADES", {"adversarial": {"method": "trades"}}),
    Recipe("mart", "MART", {"adversarial": {"method": "mart"}}),
)

DEFAULTS: dict[str, Any] = {
    "seeds": 2,
    "recipes": [r.key for r in RECIPES],
    # 32x32: the CIFAR-scale ImageNet-C parameters assume CIFAR-sized images.
    "data": {"dataset_name": "digits", "channels": 1, "image_size": [32, 32]},
    "model": {"name": "cnn", "features": [16, 32], "dropout_rate": 0.1},
    # lr 0.003: at 0.001 the CNN reached 65% clean accuracy after 6 epochs (issue 13 profile).
    # Validation only after the last epoch and no training-curve figures: the ranking reads the
    # test split, and both cost seconds per run on a CPU.
    "training": {"epochs": 15, "batch_size": 64, "learning_rate": 0.003, "optimizer": "adam",
                 "ema_enabled": False, "progress_bar": False, "write_figures": False,
                 "adversarial": {"eps": 0.1, "steps": 5}},
    "noise_types": ["gaussian", "salt_pepper", "fog", "occlusion"],
    "levels": [0.1, 0.2, 0.3, 0.4, 0.5],
    "corruption_severities": [1, 2, 3, 4, 5],
    "pgd_eps": [0.05, 0.1],
    "pgd_steps": 10,
    "attack_examples": None,  # PGD on the first N test examples (None = all)
    # quick: batch 32 with a cosine decay converges within 6 epochs (clean accuracy 0.61-0.95 over
    # the recipes and 3 seeds, vs 0.51-0.97 at batch 64 with a constant rate), which is what makes
    # its ranking stable across seeds: Spearman 0.95 / 1.00 / 0.95 over the three seed pairs, vs
    # 0.61 (batch 64, constant) and 0.64-0.78 (batch 32, constant); docs/RESEARCH.md.
    "quick": {"training.epochs": 6, "training.batch_size": 32, "training.lr_schedule": "cosine",
              "training.adversarial.steps": 3, "corruption_severities": [3], "pgd_steps": 5, "attack_examples": 200},
}

RECIPE_COLUMNS = ["rank", "recipe_key", "recipe", "score", "score_lo", "score_hi"]
_METRICS = ["clean_accuracy", "noise_accuracy", "corruption_error", "pgd_accuracy_small", "pgd_accuracy_large",
            "ece", "mean_snr"]
for _m in _METRICS:
    RECIPE_COLUMNS += [_m, f"{_m}_lo", f"{_m}_hi"]
RECIPE_COLUMNS += [f"noise_accuracy_{n}" for n in DEFAULTS["noise_types"]] + ["n_seeds", "train_time_s"]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def load_recipe_settings(path: str | Path | None = None, *, quick: bool = False,
                         overrides: Sequence[str] = (), seeds: int | None = None) -> dict:
    """Recipe settings: DEFAULTS, then the YAML file (any key of DEFAULTS; ``data`` / ``model`` /
    ``training`` are config sections), then ``quick``, then ``KEY=VALUE`` overrides."""
    from robust_vision.config import parse_override

    raw = dict(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipes file {str(p)!r} not found; pass an existing YAML file")
        loaded = yaml.safe_load(p.read_text()) or {}
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"recipes file: unknown key {unknown[0]!r}; valid keys: {', '.join(DEFAULTS)}")
        raw = _merge(raw, loaded)
    if quick:
        for k, v in raw["quick"].items():
            _set_dotted(raw, k, v)
    for text in overrides:
        k, v = parse_override(text)
        if k.split(".")[0] not in DEFAULTS:
            raise ConfigError(f"--override {k}: unknown key; valid keys: {', '.join(DEFAULTS)}")
        _set_dotted(raw, k, v)
    if seeds is not None:
        raw["seeds"] = seeds
    bad = [k for k in raw["recipes"] if k not in {r.key for r in RECIPES}]
    if bad:
        raise ConfigError(f"recipes: unknown recipe {bad[0]!r}; valid: {', '.join(r.key for r in RECIPES)}")
    if len(raw["pgd_eps"]) != 2:
        raise ConfigError(f"pgd_eps: got {raw['pgd_eps']!r}; expected two budgets, e.g. [0.05, 0.1]")
    recipe_config(raw, RECIPES[0], 0, Path("."))  # validates data / model / training now
    return raw


def recipe_config(settings: dict, recipe: Recipe, seed: int, run_dir: Path):
    """The trainer config of ``recipe`` with ``seed`` (base sections + the recipe's overrides)."""
    epochs = settings["training"]["epochs"]
    training = _merge(_merge(settings["training"], recipe.training),
                      {"seed": seed, "checkpoint_dir": str(run_dir), "save_every": epochs, "eval_every": epochs})
    return config_from_dict({"metadata": {"experiment": "recipes", "recipe": recipe.key, "seed": seed},
                             "data": settings["data"], "model": settings["model"], "training": training})


def corrupted_test_set(settings: dict, images: np.ndarray, seed: int) -> np.ndarray:
    """The seed's 15 ImageNet-C corruptions (CIFAR scale) of the test images at every configured
    severity: (n_corruptions * n_severities, N, H, W, C) float32 in [0, 1], corruption-major.

    Made once per seed and shared by every recipe, so every model of a seed is scored on the
    same corrupted images (corruption c, severity s uses fold_in(fold_in(key, crc32(c)), s) of
    the seed's "corruptions" part key)."""
    from robust_vision.corruptions import IMAGENET_C, get_corruption
    from robust_vision.evaluation.suite import _crc, part_key

    key = part_key(seed, "corruptions")
    x = jnp.asarray(images, jnp.float32)
    out = [get_corruption(c)(jax.random.fold_in(jax.random.fold_in(key, _crc(c)), int(s)), x, int(s), "cifar")
           for c in IMAGENET_C for s in settings["corruption_severities"]]
    return np.asarray(jnp.stack(out), np.float32)


# Module-level jitted evaluators with the model function static and its variables traced: every
# recipe and seed (same model structure, see protocols._shared_forward) reuses one compiled
# program per process, and the persistent compile cache serves the next process.
@functools.partial(jax.jit, static_argnames=("forward",))
def _correct_stack(forward: Callable, variables: Any, stack: jax.Array, labels: jax.Array) -> jax.Array:
    """stack (M, N, H, W, C) -> (M, N) bool: argmax of the logits equals the label."""
    return jax.lax.map(lambda x: jnp.argmax(forward(variables, x), axis=-1) == labels, stack)


@functools.partial(jax.jit, static_argnames=("forward", "steps"))
def _pgd_correct(forward: Callable, variables: Any, images: jax.Array, labels: jax.Array, key: jax.Array,
                 eps: jax.Array, *, steps: int) -> jax.Array:
    """(N,) bool: still correct after Linf PGD (random start, ``steps`` steps, step 2.5 eps / steps)."""
    from robust_vision.attacks.gradient import pgd

    logits_fn = functools.partial(forward, variables)
    # the rolled loop (one loop body to compile): with the models' convolution (models/conv.py) it
    # runs as fast as the unrolled one on CPU, same iterates bit for bit (quickstart CNN, PGD-10)
    x_adv = pgd(logits_fn, images, labels, key, eps, norm="linf", steps=steps)
    return jnp.argmax(logits_fn(x_adv), axis=-1) == labels


def _evaluate(settings: dict, model, images: np.ndarray, labels: np.ndarray, corrupted: np.ndarray,
              seed: int) -> dict:
    from robust_vision.evaluation.robustness import evaluate_robustness
    from robust_vision.evaluation.suite import part_key
    from robust_vision.research.protocols import _shared_forward
    from robust_vision.research.tables import geometric_mean

    forward = _shared_forward(model.parts)
    variables = model.variables
    res = evaluate_robustness(forward, variables, images, labels, model_name="recipe",
                              noise_types=list(settings["noise_types"]), levels=[0.0] + list(settings["levels"]),
                              n_draws=1, batch_size=len(labels), seed=seed)
    clean = next(r for r in res.rows if r["level"] == 0.0)
    noisy = [r for r in res.rows if r["level"] > 0.0]
    out = {"clean_accuracy": clean["accuracy"], "ece": clean["ece"],
           "noise_accuracy": float(np.mean([r["accuracy"] for r in noisy])),
           "mean_snr": geometric_mean(r["snr"] for r in noisy)}
    for n in settings["noise_types"]:
        out[f"noise_accuracy_{n}"] = float(np.mean([r["accuracy"] for r in noisy if r["noise_type"] == n]))
    y = jnp.asarray(labels, jnp.int32)
    out["corruption_error"] = 1.0 - float(np.mean(np.asarray(_correct_stack(forward, variables, corrupted, y))))
    small, large = sorted(float(e) for e in settings["pgd_eps"])
    key = part_key(seed, "attacks")
    from robust_vision.research.protocols import evenly_spaced

    # A subset at evenly spaced positions of the test split (all classes), the same for every recipe.
    sub = evenly_spaced(len(labels), min(int(settings.get("attack_examples") or len(labels)), len(labels)))
    x, y = jnp.asarray(images[sub], jnp.float32), y[sub]
    for name, eps in (("pgd_accuracy_small", small), ("pgd_accuracy_large", large)):
        correct = _pgd_correct(forward, variables, x, y, key, jnp.float32(eps), steps=int(settings["pgd_steps"]))
        out[name] = float(np.mean(np.asarray(correct)))
    return out


def _score(m: dict) -> float:
    return float(np.mean([m["noise_accuracy"], 1.0 - m["corruption_error"], m["pgd_accuracy_large"]]))


def seed_stability(per_seed: Sequence[dict]) -> list[dict]:
    """Agreement of the ranking between seeds, for every pair of seeds: Spearman's rank
    correlation of the per-seed scores over the recipes, and whether both seeds put the same
    recipe first and the same recipe last."""
    from scipy.stats import spearmanr

    seeds = sorted({int(r["seed"]) for r in per_seed})
    keys = list(dict.fromkeys(r["recipe_key"] for r in per_seed))
    score = {(r["recipe_key"], int(r["seed"])): _score(r) for r in per_seed}
    out = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            common = [k for k in keys if (k, a) in score and (k, b) in score]
            sa, sb = (np.array([score[(k, s)] for k in common]) for s in (a, b))
            rho = float(spearmanr(sa, sb).statistic) if len(common) > 2 else float("nan")
            out.append({"seed_a": a, "seed_b": b, "n_recipes": len(common), "spearman": rho,
                        "top_a": common[int(np.argmax(sa))], "top_b": common[int(np.argmax(sb))],
                        "bottom_a": common[int(np.argmin(sa))], "bottom_b": common[int(np.argmin(sb))]})
    return out


def render_stability(stability: Sequence[dict], names: dict[str, str]) -> list[str]:
    if not stability:
        return ["Ranking stability across seeds: one seed only, not measured."]
    lines = []
    for st in stability:
        top = "same" if st["top_a"] == st["top_b"] else "different"
        bottom = "same" if st["bottom_a"] == st["bottom_b"] else "different"
        lines.append(f"Ranking stability, seed {st['seed_a']} vs seed {st['seed_b']} ({st['n_recipes']} recipes): "
                     f"Spearman rank correlation of the per-seed scores {st['spearman']:.2f}; top recipe "
                     f"{names[st['top_a']]} / {names[st['top_b']]} ({top}); bottom recipe {names[st['bottom_a']]} / "
                     f"{names[st['bottom_b']]} ({bottom}).")
    return lines


def rank_recipes(per_seed: Sequence[dict], *, seed: int = 0) -> list[dict]:
    """Aggregate per-seed rows (recipe_key, recipe, seed, metrics) into the ranked table:
    mean over seeds and a bootstrap 90% interval over seeds for every metric and the score."""
    from robust_vision.research.bootstrap import bootstrap_interval

    out = []
    for key in dict.fromkeys(r["recipe_key"] for r in per_seed):
        rows = [r for r in per_seed if r["recipe_key"] == key]
        row: dict[str, Any] = {"recipe_key": key, "recipe": rows[0]["recipe"], "n_seeds": len(rows),
                               "train_time_s": float(np.sum([r.get("train_time_s", 0.0) for r in rows]))}
        for m in _METRICS + ["score"]:
            vals = np.asarray([r[m] if m != "score" else _score(r) for r in rows], np.float64)
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = bootstrap_interval(vals, seed=seed)
        for k in rows[0]:
            if k.startswith("noise_accuracy_"):
                row[k] = float(np.mean([r[k] for r in rows]))
        out.append(row)
    out.sort(key=lambda r: -r["score"] if math.isfinite(r["score"]) else math.inf)
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def render_recipes(rows: Sequence[dict], settings: dict, wall_s: float, command: str,
                   stability: Sequence[dict] = ()) -> str:
    from robust_vision.research.render import fmt_ci
    from robust_vision.research.tables import markdown_table

    eps_s, eps_l = sorted(settings["pgd_eps"])
    lines = ["# What makes a model robust: training recipes side by side", "",
             f"Model {settings['model']}, data {settings['data']}, {settings['training']['epochs']} epochs, "
             f"{settings['seeds']} seed(s). Noise accuracy: mean over {', '.join(settings['noise_types'])} at "
             f"levels {', '.join(f'{v:g}' for v in settings['levels'])}. Corruption error: mean top-1 error over the "
             f"15 ImageNet-C corruptions (CIFAR scale) at severities {settings['corruption_severities']}. PGD: Linf, "
             f"{settings['pgd_steps']} steps, on {settings.get('attack_examples') or 'all'} test examples. Mean SNR: geometric mean over the noise grid. Brackets: bootstrap 90% "
             "interval over seeds (with 2 seeds, about the range of the two). Score (ranking) = mean of noise "
             f"accuracy, 1 - corruption error and PGD accuracy at eps {eps_l:g}.", ""]
    pct = dict(percent=True)
    lines.append(markdown_table(
        ["Rank", "Recipe", "Score", "Clean acc.", "Noise acc.", "Corruption error", f"PGD acc. eps {eps_s:g}",
         f"PGD acc. eps {eps_l:g}", "ECE", "Mean SNR"],
        [[r["rank"], r["recipe"], fmt_ci(r["score"], r["score_lo"], r["score_hi"]),
          fmt_ci(r["clean_accuracy"], r["clean_accuracy_lo"], r["clean_accuracy_hi"], **pct),
          fmt_ci(r["noise_accuracy"], r["noise_accuracy_lo"], r["noise_accuracy_hi"], **pct),
          fmt_ci(r["corruption_error"], r["corruption_error_lo"], r["corruption_error_hi"], **pct),
          fmt_ci(r["pgd_accuracy_small"], r["pgd_accuracy_small_lo"], r["pgd_accuracy_small_hi"], **pct),
          fmt_ci(r["pgd_accuracy_large"], r["pgd_accuracy_large_lo"], r["pgd_accuracy_large_hi"], **pct),
          fmt_ci(r["ece"], r["ece_lo"], r["ece_hi"]), fmt_ci(r["mean_snr"], r["mean_snr_lo"], r["mean_snr_hi"])]
         for r in rows]))
    lines += ["", *render_stability(stability, {r["recipe_key"]: r["recipe"] for r in rows}), "",
              f"Command: `{command}`; wall time {wall_s:.0f} s."]
    return "\n".join(lines)


def plot_recipes(rows: Sequence[dict], fig_dir: Path) -> list[Path]:
    """One figure: per recipe, noise accuracy, 1 - corruption error and PGD accuracy (large eps)
    with their intervals over seeds, in rank order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    names = [r["recipe"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.5))
    series = [("noise_accuracy", "noise accuracy", 1, 0), ("corruption_error", "1 - corruption error", -1, 1),
              ("pgd_accuracy_large", "PGD accuracy (large eps)", 1, 0)]
    for i, (m, label, sign, off) in enumerate(series):
        val = np.array([off + sign * r[m] for r in rows])
        lo = np.array([off + sign * (r[f"{m}_lo"] if sign > 0 else r[f"{m}_hi"]) for r in rows])
        hi = np.array([off + sign * (r[f"{m}_hi"] if sign > 0 else r[f"{m}_lo"]) for r in rows])
        err = np.nan_to_num(np.stack([val - lo, hi - val]), nan=0.0).clip(min=0)
        ax.errorbar(val, y + (i - 1) * 0.22, xerr=err, fmt="o", ms=4, capsize=2, label=label)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction (higher is better); bars: 90% bootstrap interval over seeds")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    paths = []
    for fmt in ("png", "pdf"):
        p = fig_dir / f"recipes.{fmt}"
        fig.savefig(p, dpi=150)
        paths.append(p)
    plt.close(fig)
    return paths


def run_recipes(settings: dict, out_dir: str | Path, *, quiet: bool = False, log: Callable[[str], None] = print,
                command: str = "robust-vision-research run --experiment recipes") -> list[dict]:
    """Train and evaluate every recipe x seed; write the ranked table, the figure and the runs."""
    from tqdm import tqdm

    from robust_vision.data.sources import converted_splits, read_examples
    from robust_vision.runs.loading import load_trained_model
    from robust_vision.evaluation.report import versions
    from robust_vision.io import write_csv
    from robust_vision.research.tables import write_table
    from robust_vision.runs.paths import checkpoints_dir
    from robust_vision.preflight import check_memory
    from robust_vision.runs.resume import run_finished
    from robust_vision.training.trainer import train

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipes = [r for r in RECIPES if r.key in settings["recipes"]]
    jobs = [(seed, r) for seed in range(int(settings["seeds"])) for r in recipes]
    first = recipe_config(settings, recipes[0], 0, out_dir)
    test_images, test_labels = read_examples(converted_splits(first.data, ("test",))["test"])
    per_seed = []
    corrupted: dict[int, np.ndarray] = {}
    bar = tqdm(jobs, desc="recipes", disable=quiet, unit="run")
    for seed, recipe in bar:
        bar.set_postfix_str(f"{recipe.key} seed {seed}")
        run_dir = out_dir / "runs" / "recipes" / f"seed{seed}" / recipe.key
        cfg = recipe_config(settings, recipe, seed, run_dir)
        t0 = time.perf_counter()
        if not run_finished(run_dir, cfg):
            check_memory(cfg)
            train(cfg, log=lambda s: None)
        t1 = time.perf_counter()
        model = load_trained_model(checkpoints_dir(run_dir) / "epochs", name=recipe.key)
        if seed not in corrupted:  # once per seed, shared by its recipes
            corrupted = {seed: corrupted_test_set(settings, test_images, seed)}
        metrics = _evaluate(settings, model, test_images, test_labels, corrupted[seed], seed)
        per_seed.append({"recipe_key": recipe.key, "recipe": recipe.name, "seed": seed, **metrics,
                         "train_time_s": t1 - t0, "eval_time_s": time.perf_counter() - t1})
        if quiet:
            continue
        bar.write(f"  {recipe.name} seed {seed}: clean {metrics['clean_accuracy']:.3f}, noise "
                  f"{metrics['noise_accuracy']:.3f}, corruption error {metrics['corruption_error']:.3f}, PGD "
                  f"{metrics['pgd_accuracy_large']:.3f} ({t1 - t0:.0f} s train, {time.perf_counter() - t1:.0f} s eval)")
    ranked = rank_recipes(per_seed)
    wall = time.perf_counter() - t_start
    seed_cols = list(per_seed[0].keys())
    write_csv(out_dir / "recipes_per_seed.csv", per_seed, seed_cols)
    columns = [c for c in RECIPE_COLUMNS if c in ranked[0] or c in ("rank",)]
    stability = seed_stability(per_seed)
    write_table(out_dir, "recipes", ranked, columns, render_recipes(ranked, settings, wall, command, stability))
    try:
        plot_recipes(ranked, out_dir / "figures")
    except Exception as exc:  # noqa: BLE001 - the tables are already written
        log(f"warning: figure recipes failed: {type(exc).__name__}: {exc}")
    (out_dir / "recipes.json").write_text(json.dumps({"command": command, "settings": settings, "wall_time_s": wall,
                                                      "versions": versions(), "per_seed": per_seed,
                                                      "stability": stability}, indent=1,
                                                     default=str))
    log((out_dir / "recipes.md").read_text())
    log(f"Wrote the recipe table to {out_dir} in {wall:.1f} s")
    return ranked

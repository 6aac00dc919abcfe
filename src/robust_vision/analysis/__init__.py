"""Analyses of trained models (``robust-vision-analyze``): representation spectra, 2-D
decision-boundary slices, feature-map heatmaps and magnitude pruning. See docs/ANALYSIS.md.

Modules: :mod:`.features` (per-layer activations of a restored model), :mod:`.spectrum_cmd`,
:mod:`.boundary`, :mod:`.feature_maps`, :mod:`.prune_eval` (one ``run_*(ctx, ...)`` function
each, taking a :class:`.common.Context`: config, restored model, split, output options) and
:mod:`.cli` (``analyze_main``). Nothing is imported here, so that the CLI can set its
environment before JAX loads.
"""

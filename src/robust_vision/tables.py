"""The one home of the tables ``robust-vision-eval`` writes: every file name and column list.

The evaluation parts write these files (``evaluation/``) and the figures read them back
(``viz/``); both import the names from here, so a table is renamed or given a column in one
place. Plain constants: no imports, so any layer may read them.

Tables the figures read hold text only in the model / corruption / attack / method /
noise_type columns; other text (scale, reference, norm) is in the JSON, in corruption_mce.csv
and in the attack name (pgd_l2).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- file names

RESULTS_JSON = "results.json"  # every part's results, the config and the versions of one evaluation
ROBUSTNESS_CSV = "robustness_results.csv"
CONFIDENCES_NPZ = "confidences.npz"
CORRUPTION_RESULTS_CSV = "corruption_results.csv"
CORRUPTION_SUMMARY_CSV = "corruption_summary.csv"
CORRUPTION_MCE_CSV = "corruption_mce.csv"
ATTACK_RESULTS_CSV = "attack_results.csv"
ATTACK_SANITY_CSV = "attack_sanity.csv"
CERTIFIED_CSV = "certified_accuracy.csv"
CERTIFIED_EXAMPLES_CSV = "certified_examples.csv"
VERIFIED_CSV = "verified_results.csv"
RELIABILITY_CSV = "reliability.csv"
CALIBRATION_CSV = "calibration_summary.csv"
CONFORMAL_CSV = "conformal_results.csv"
SELECTIVE_CSV = "selective_accuracy.csv"


def robustness_type_csv(noise_type: str) -> str:
    """robustness_<noise type>.csv: the grid's rows of one noise type."""
    return f"robustness_{noise_type}.csv"


# --------------------------------------------------------------------------- columns

RESULT_COLUMNS = ["model", "noise_type", "level", "accuracy", "confidence", "margin", "snr", "snr_median", "ece",
                  "loss", "degradation", "n_images", "n_draws"]
CORRUPTION_COLUMNS = ["model", "corruption", "severity", "error", "accuracy", "n", "held_out"]
CORRUPTION_SUMMARY_COLUMNS = ["model", "corruption", "mean_error", "ce", "relative_ce", "clean_error",
                              "held_out"]
CORRUPTION_MCE_COLUMNS = ["model", "reference", "clean_error", "mean_error", "mce", "relative_mce",
                          "n_corruptions", "n_relative", "mean_error_all", "severities", "scale"]
ATTACK_COLUMNS = ["model", "attack", "eps", "steps", "accuracy", "margin", "snr", "snr_median", "n"]
SANITY_COLUMNS = ["model", "check", "passed", "eps", "n", "message"]
CERTIFIED_COLUMNS = ["model", "sigma", "radius", "certified_accuracy", "abstain_fraction", "n", "n0", "n_samples",
                     "alpha"]
CERTIFIED_EXAMPLE_COLUMNS = ["model", "sigma", "index", "label", "prediction", "radius"]
VERIFIED_COLUMNS = ["model", "method", "norm", "eps", "n_examples", "clean_accuracy", "pgd_accuracy",
                    "verified_accuracy", "mean_margin_lower_bound", "seconds_per_image"]
RELIABILITY_COLUMNS = ["model", "noise_type", "level", "bin", "bin_lower", "bin_upper", "count", "mean_confidence",
                       "accuracy", "ece"]
CALIBRATION_COLUMNS = ["model", "noise_type", "level", "accuracy", "temperature", "ece", "ece_temperature", "nll",
                       "nll_temperature", "n"]
CONFORMAL_COLUMNS = ["model", "method", "noise_type", "level", "alpha", "coverage", "mean_set_size",
                     "empty_fraction", "threshold", "n", "n_calibration"]
SELECTIVE_COLUMNS = ["model", "noise_type", "level", "target_coverage", "coverage", "threshold",
                     "selective_accuracy", "n_kept"]

# --------------------------------------------------------------------------- the suite parts' tables

# results.json key of a suite part -> its tables: (file name, key of the rows in the part's
# results, columns), in the order they are written.
SUITE_TABLES: dict[str, list[tuple[str, str, list[str]]]] = {
    "corruptions": [(CORRUPTION_RESULTS_CSV, "results", CORRUPTION_COLUMNS),
                    (CORRUPTION_SUMMARY_CSV, "summary", CORRUPTION_SUMMARY_COLUMNS),
                    (CORRUPTION_MCE_CSV, "aggregate", CORRUPTION_MCE_COLUMNS)],
    "attacks": [(ATTACK_RESULTS_CSV, "results", ATTACK_COLUMNS),
                (ATTACK_SANITY_CSV, "sanity_checks", SANITY_COLUMNS)],
    "certification": [(CERTIFIED_CSV, "results", CERTIFIED_COLUMNS),
                      (CERTIFIED_EXAMPLES_CSV, "per_example", CERTIFIED_EXAMPLE_COLUMNS)],
    "verified": [(VERIFIED_CSV, "results", VERIFIED_COLUMNS)],
    "calibration": [(RELIABILITY_CSV, "reliability", RELIABILITY_COLUMNS),
                    (CALIBRATION_CSV, "calibration", CALIBRATION_COLUMNS),
                    (CONFORMAL_CSV, "conformal", CONFORMAL_COLUMNS),
                    (SELECTIVE_CSV, "selective", SELECTIVE_COLUMNS)],
}

# The files a results directory may hold that a figure is drawn from (robust-vision-plot).
FIGURE_TABLES: tuple[str, ...] = (ROBUSTNESS_CSV, CONFIDENCES_NPZ, CORRUPTION_RESULTS_CSV, CORRUPTION_SUMMARY_CSV,
                                  ATTACK_RESULTS_CSV, CERTIFIED_CSV, VERIFIED_CSV, RELIABILITY_CSV, CONFORMAL_CSV,
                                  SELECTIVE_CSV)

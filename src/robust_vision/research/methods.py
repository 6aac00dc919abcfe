"""The methods of the seed's master table and the controlled experiments that compare them.

Each method is described once here (what it is, what varies); the protocols decide how it is
trained. Method keys are stable identifiers used in every table (``method_key`` column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["EXPERIMENTS", "Experiment", "METHODS", "MASTER_ORDER", "Method", "method_by_key", "methods_for"]


@dataclass(frozen=True)
class Method:
    """One trained model family of the study.

    family: "crossbar" (local rule, ``rule`` + ``clip``), "cnn" or "linear" (backprop,
    ``loss_type`` + ``margin_lambda``). ``protocols``: where the method is run.
    """

    key: str
    name: str
    family: str
    learning_rule: str
    constraints: str
    loss: str
    architecture: str
    protocols: tuple[str, ...]
    in_master: bool = True
    rule: Optional[str] = None
    clip: Optional[str] = None  # key into StudySettings.clip_ranges, None = unconstrained
    loss_type: Optional[str] = None
    margin_lambda: float = 0.0

    @property
    def in_pattern_master(self) -> bool:
        """Rows of the pattern protocol's master table: the seed's methods and the original MLPs."""
        return self.in_master or self.family == "mlp"


_BOTH = ("pattern", "classification")
_CLS = ("classification",)
_CNN = "2-stage CNN"
_XBAR = "Linear crossbar"

METHODS: tuple[Method, ...] = (
    Method("cnn_margin_10", "CNN Margin-10", "cnn", "SGD (backprop, Adam)", "None", "Margin (lambda=10)", _CNN, _CLS,
           loss_type="margin", margin_lambda=10.0),
    Method("hebbian_uncon", "Hebbian Uncon.", "crossbar", "Hebbian", "None", "Correlation", _XBAR, _BOTH,
           rule="hebbian"),
    Method("hebbian_loose", "Hebbian Loose", "crossbar", "Hebbian", "[0, 2]", "Correlation", _XBAR, _BOTH,
           rule="hebbian", clip="loose"),
    Method("hebbian_physical", "Hebbian Physical", "crossbar", "Hebbian", "[0, 1]", "Correlation", _XBAR, _BOTH,
           rule="hebbian", clip="physical"),
    Method("hebbian_tight", "Hebbian Tight", "crossbar", "Hebbian", "[0, 0.5]", "Correlation", _XBAR, _BOTH,
           rule="hebbian", clip="tight"),
    Method("cnn_margin_1", "CNN Margin-1", "cnn", "SGD (backprop, Adam)", "None", "Margin (lambda=1)", _CNN, _CLS,
           loss_type="margin", margin_lambda=1.0),
    Method("cnn_ce", "CNN Standard", "cnn", "SGD (backprop, Adam)", "None", "Cross-Entropy", _CNN, _CLS,
           loss_type="cross_entropy"),
    Method("sgd_uncon", "SGD Uncon.", "crossbar", "SGD", "None", "MSE", _XBAR, _BOTH, rule="sgd_mse"),
    # Not in the seed's master table: the linear side of the architecture experiment (same
    # optimizer, loss and epochs as the CNN it is compared with; a linear classifier with bias).
    Method("linear_ce", "Linear CE", "linear", "SGD (backprop, Adam)", "None", "Cross-Entropy", "Linear (pixels)",
           _CLS, in_master=False, loss_type="cross_entropy"),
    Method("linear_margin_10", "Linear Margin-10", "linear", "SGD (backprop, Adam)", "None", "Margin (lambda=10)",
           "Linear (pixels)", _CLS, in_master=False, loss_type="margin", margin_lambda=10.0),
)
_MLP = "Per-image MLP 4096-128-2 (original code)"
_PAT = ("pattern",)
# The seed's original loss experiment (research/original.py): per-image MLPs trained by plain
# gradient descent on MSE + lambda * margin. Pattern protocol only, beside the crossbars.
METHODS += (
    Method("mlp_mse", "Orig. MLP MSE (lambda=0)", "mlp", "GD (backprop)", "None", "MSE", _MLP, _PAT, in_master=False,
           loss_type="mse_margin", margin_lambda=0.0),
    Method("mlp_margin_1", "Orig. MLP Margin-1", "mlp", "GD (backprop)", "None", "MSE + Margin (lambda=1)", _MLP,
           _PAT, in_master=False, loss_type="mse_margin", margin_lambda=1.0),
    Method("mlp_margin_10", "Orig. MLP Margin-10", "mlp", "GD (backprop)", "None", "MSE + Margin (lambda=10)", _MLP,
           _PAT, in_master=False, loss_type="mse_margin", margin_lambda=10.0),
)
MASTER_ORDER: tuple[str, ...] = tuple(m.key for m in METHODS if m.in_master)


def method_by_key(key: str) -> Method:
    for m in METHODS:
        if m.key == key:
            return m
    raise KeyError(f"unknown method {key!r}; valid methods: {', '.join(m.key for m in METHODS)}")


def methods_for(protocol: str, *, linear_baselines: bool = True) -> list[Method]:
    """Methods run by ``protocol``, in master-table order (extras last)."""
    return [m for m in METHODS if protocol in m.protocols
            and (m.in_master or m.family == "mlp" or linear_baselines)]


@dataclass(frozen=True)
class Experiment:
    """A controlled comparison: only ``factor`` differs between its methods.

    ``reference``: the row the others are compared with (the seed's "baseline" row).
    ``compared``: the methods whose best-to-worst SNR ratio is the factor's importance.
    """

    key: str
    factor: str
    title: str
    methods: tuple[str, ...]
    reference: str
    compared: tuple[str, ...]
    fixed: str


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("learning_rule", "Learning rule", "Learning rule: Hebbian vs SGD-MSE",
               ("hebbian_uncon", "sgd_uncon"), "hebbian_uncon", ("hebbian_uncon", "sgd_uncon"),
               "crossbar, unconstrained weights, same data, init and batches; only the update rule (and its "
               "seed learning rate) differs"),
    Experiment("constraints", "Constraints", "Hardware constraints: weight clip ranges (Hebbian)",
               ("hebbian_uncon", "hebbian_loose", "hebbian_physical", "hebbian_tight"), "hebbian_uncon",
               ("hebbian_uncon", "hebbian_loose", "hebbian_physical", "hebbian_tight"),
               "Hebbian crossbar, same data, init, eta and batches; only the clip range differs"),
    Experiment("loss", "Loss function", "Loss function: cross-entropy vs margin (CNN)",
               ("cnn_ce", "cnn_margin_1", "cnn_margin_10"), "cnn_ce", ("cnn_ce", "cnn_margin_1", "cnn_margin_10"),
               "same CNN, data, init, optimizer, epochs and batches; only the training loss differs"),
    Experiment("architecture", "Architecture", "Architecture: linear vs CNN (backprop)",
               ("linear_ce", "cnn_ce", "linear_margin_10", "cnn_margin_10"), "linear_ce", ("linear_ce", "cnn_ce"),
               "same loss, optimizer, epochs and data; only the model differs (importance from the CE pair)"),
)

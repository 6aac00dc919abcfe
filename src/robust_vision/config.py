"""Typed, validated configuration.

A config is a YAML file with the sections ``model``, ``training``, ``data`` and
``evaluation`` (plus a free-form ``metadata`` section and optional ``sweep`` /
``research`` sections used by the research commands). Every section is a dataclass;
loading checks every key against it:

* an unknown key, a value of the wrong type, or a value outside its range raises
  :class:`ConfigError`, whose one-line message names the key, the bad value and what
  is accepted (the CLI prints it and exits with code 2);
* ``--override a.b=c`` sets any key, the value parsed as YAML and then converted to
  the field's type (``training.epochs=5``, ``evaluation.noise_levels=[0,0.1]``).

Keys in the seed document's older layout (``training.dataset_name``,
``training.image_size``, ``training.checkpoint_every``, ``training.margin``,
``training.margin_weight``) are accepted and moved to their current place, see
``LEGACY_KEYS``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config problem, with a one-line message that names the key and the fix."""


def _f(default: Any = dataclasses.MISSING, *, help: str = "", min: float | None = None,
       max: float | None = None, min_exclusive: bool = False, factory: Any = None) -> Any:
    """A dataclass field with documentation and an optional numeric range."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass
class PerturbConfig:
    """Options of the perturbative models (``models/perturb.py``); null = the model's default."""

    nfilters: Optional[int] = _f(None, min=1, help="channels of every layer (lenet 64, cifarnet 128, perturb_resnet18 64)")
    nmasks: int = _f(1, min=1, help="noise masks per input channel (fan-out)")
    noise_level: float = _f(0.1, min=0.0, help="masks are U(-level, level) (uniform) or level * N(0, 1) (normal)")
    noise_type: Literal["uniform", "normal"] = _f("uniform", help="distribution of the fixed noise masks")
    scale_noise: float = _f(1.0, min=0.0, help="multiplies the first layer's noise level")
    filter_size: int = _f(0, min=0, help="0 = perturbation layer (masks + 1x1 conv), n > 0 = n x n convolution")
    first_filter_size: Optional[int] = _f(None, min=0, help="the same for the first layer (null: lenet/cifarnet 0, perturb_resnet18 3)")
    unique_masks: bool = _f(True, help="a different set of masks for every input channel")
    train_masks: bool = _f(False, help="train the masks with the weights (false = fixed masks)")
    mix_maps: bool = _f(False, help="a second 1x1 conv so that channels exchange information")
    use_act: bool = _f(False, help="activation on the perturbed input of the first layer")
    activation: Literal["relu", "rrelu", "prelu", "elu", "selu", "tanh", "sigmoid"] = _f("relu", help="activation")
    pool_type: Literal["max", "avg"] = _f("max", help="pooling between stages")
    linear: Optional[int] = _f(None, min=1, help="lenet / cifarnet: hidden units of the classifier (128 / 256)")
    dropout: Optional[float] = _f(None, min=0.0, max=0.99, help="lenet / cifarnet: dropout before each linear layer (0.5)")
    match: Literal["perturb_resnet18"] = _f("perturb_resnet18", help="resnet18_matched: the model whose parameter count it matches (with these perturb options)")


@dataclass
class KrotovConfig:
    """The Krotov-Hopfield model (``models/local.py``): an unsupervised local layer trained
    without labels before the supervised head is trained by the trainer."""

    n_hidden: int = _f(100, min=1, help="hidden units of the local layer (the paper: 2000)")
    power: float = _f(4.5, min=0.0, min_exclusive=True, help="activation relu(W v)^power of the hidden layer")
    p: float = _f(3.0, min=1.0, help="Lebesgue p-norm of the local rule")
    k: int = _f(2, min=2, help="rank of the unit that receives the anti-Hebbian update")
    delta: float = _f(0.4, min=0.0, help="anti-Hebbian strength Delta")
    lr: float = _f(0.04, min=0.0, min_exclusive=True, help="initial learning rate of the local rule (decays linearly to 0)")
    epochs: int = _f(50, min=1, help="unsupervised epochs of the local layer")
    batch_size: int = _f(100, min=1, help="minibatch of the local rule")
    plot_fields: bool = _f(True, help="write plots/receptive_fields.png/.pdf of the learned layer")


@dataclass
class ModelConfig:
    name: str = _f("cnn", help="model registry name: cnn, resnet18, linear, crossbar, lenet, cifarnet, perturb_resnet18, resnet18_matched, krotov, preact_resnet18, wrn-28-10, wrn-34-10, wrn-34-20, wrn-70-16 (see `robust_vision.models.MODELS`)")
    n_classes: Optional[int] = _f(None, min=2, help="number of classes; null = taken from the dataset (a mismatch is an error)")
    features: list[int] = _f(factory=lambda: [32, 64, 128], help="cnn: channels of each stage (one conv block + 2x downsampling per stage after the first)")
    dropout_rate: float = _f(0.1, min=0.0, max=0.99, help="dropout before the classifier (cnn) ")
    use_residual: bool = _f(True, help="cnn: residual (True) or plain (False) conv blocks")
    use_batch_norm: bool = _f(True, help="cnn: batch norm after each convolution")
    width: int = _f(64, min=1, help="resnet18, preact_resnet18: channels of the first stage (doubles each stage)")
    normalize_mean: Optional[list[float]] = _f(None, help="preact_resnet18, wrn-*, cnn7, cnn_small: per-channel mean subtracted from the [0, 1] input (RobustBench CIFAR-10: [0.4914, 0.4822, 0.4465]); null = no normalisation")
    normalize_std: Optional[list[float]] = _f(None, help="preact_resnet18, wrn-*, cnn7, cnn_small: per-channel std the input is divided by (RobustBench CIFAR-10: [0.2471, 0.2435, 0.2616]); set with normalize_mean")
    hidden_units: list[int] = _f(factory=list, help="linear: optional hidden layers (empty = a pure linear classifier)")
    perturb: PerturbConfig = field(default_factory=lambda: PerturbConfig(),
                                   metadata={"help": "lenet / cifarnet / perturb_resnet18 / resnet18_matched options"})
    krotov: KrotovConfig = field(default_factory=lambda: KrotovConfig(),
                                 metadata={"help": "krotov: unsupervised local layer + supervised linear head"})


@dataclass
class DataConfig:
    dataset_name: str = _f("digits", help="dataset layout: digits, mnist, cifar10, cifar100, image_folder, npz, tiny_imagenet, prepared (docs/DATA.md)")
    data_dir: Optional[str] = _f(None, help="path of the dataset files (directory, archive or .npz); not needed for digits")
    image_size: Optional[list[int]] = _f(None, help="resize to [H, W] (an int means square); null = native size")
    channels: Optional[int] = _f(None, help="force 1 (grayscale) or 3 (RGB) channels; null = native")
    classes: Optional[list[int]] = _f(None, help="keep only these class labels (relabelled 0..k-1 in the given order)")
    val_fraction: float = _f(0.1, min=0.0, max=0.9, help="fraction of the training pool held out for validation")
    test_fraction: float = _f(0.2, min=0.0, max=0.9, help="fraction held out for test where the source has no test split")
    split_seed: int = _f(0, help="seed of the fixed train/val/test split")
    max_train_examples: Optional[int] = _f(None, min=1, help="cap the training split (for quick runs)")
    pixel_max: Optional[float] = _f(None, min=0.0, min_exclusive=True, help="npz: the value of a white pixel of integer or float images that are neither uint8 0..255 nor float [0, 1] (e.g. 255 for int64, 65535 for uint16); they are scaled by 1 / pixel_max")


@dataclass
class HebbianConfig:
    clip_range: Optional[list[float]] = _f(None, help="clip weights to [lo, hi] after every update (null = unconstrained)")
    eta: float = _f(0.2, min=0.0, min_exclusive=True, help="Hebbian learning rate (dW = eta * x t^T)")
    sgd_eta: float = _f(0.01, min=0.0, min_exclusive=True, help="learning rate of the SGD-MSE baseline on the same model")
    iterations: int = _f(30, min=1, help="updates per training image (pattern protocol) or epochs (classification)")
    divergence_bound: float = _f(1e6, min=0.0, min_exclusive=True, help="|W| beyond this counts as diverged")


@dataclass
class AdversarialConfig:
    """Adversarial training. eps is in pixel units of images in [0, 1]."""

    method: Literal["none", "pgd", "trades", "mart", "augment"] = _f(
        "none", help="pgd: Madry PGD training; trades: TRADES; mart: MART (Wang et al. 2020); augment: add adversarial examples of a trained model to the training set")
    eps: float = _f(0.1, min=0.0, min_exclusive=True, help="attack budget (Linf for pgd/trades; L2 for the noise attack of augment)")
    steps: int = _f(10, min=1, help="attack iterations per training batch (pgd / trades) or per example (augment)")
    step_size: Optional[float] = _f(None, min=0.0, min_exclusive=True, help="attack step; null = 2.5 * eps / steps")
    trades_beta: float = _f(6.0, min=0.0, help="trades: weight of the robustness (KL) term")
    mart_beta: float = _f(6.0, min=0.0, help="mart: weight of the misclassification-aware KL term")
    augment_attack: Literal["noise_attack", "pgd", "fgsm", "sparse_pixel"] = _f(
        "noise_attack", help="augment: attack that makes the examples (noise_attack = the training-robust-networks seed's)")
    augment_source: Optional[str] = _f(None, help="augment: run directory of the model to attack (null = training.init_from)")
    augment_max_examples: Optional[int] = _f(None, min=1, help="augment: at most this many adversarial examples (null = all successful)")


@dataclass
class AugMixConfig:
    """AugMix with the Jensen-Shannon consistency loss (Hendrycks et al. 2020); robust_vision.training.augmix."""

    enabled: bool = _f(False, help="train on CE(clean) + js_weight * JS(clean, two AugMix views)")
    js_weight: float = _f(12.0, min=0.0, help="weight of the Jensen-Shannon consistency term (paper: 12)")
    width: int = _f(3, min=1, help="augmentation chains mixed per view")
    depth: int = _f(3, min=1, help="operations per chain: drawn uniformly from 1..depth")
    severity: float = _f(3.0, min=0.0, max=10.0, help="operation strength, 0..10 (paper: 3)")
    alpha: float = _f(1.0, min=0.0, min_exclusive=True, help="Dirichlet / Beta mixing parameter")


@dataclass
class RegularizerConfig:
    """Penalties added to the training loss (weight 0 = off)."""

    jacobian_weight: float = _f(0.0, min=0.0, help="weight of the Jacobian penalty ||d logits / d x||_F^2 (Hoffman et al. 2019)")
    jacobian_projections: int = _f(1, min=-1, help="random projections of the Jacobian estimate (-1 = exact)")
    jacobian_convention: Literal["frobenius_sq", "half_frobenius_sq"] = _f(
        "frobenius_sq", help="Jacobian penalty scale: frobenius_sq = ||J||_F^2 (default, unchanged meaning of existing weights); half_frobenius_sq = 1/2 ||J||_F^2 as the reference code (Hoffman et al. 2019), so the paper's weights carry over")
    spectral_weight: float = _f(0.0, min=0.0, help="weight of the spectral penalty (Nassar et al. 2020)")
    spectral_layer: str = _f("embedding", help="feature whose covariance spectrum is pushed toward 1/n^alpha")
    spectral_alpha: float = _f(1.0, min=0.0, min_exclusive=True, help="target power-law exponent")
    spectral_start: int = _f(10, min=0, help="0-based rank of the anchor eigenvalue; later ones are penalised")


@dataclass
class ValAttackConfig:
    """Held-out robust accuracy during training: Linf PGD with a random start on ``max_examples``
    validation images (evenly spaced over the split, so every class is in), eval-mode model (the evaluation weights), the same
    attack key every epoch so that epochs are compared on the same draws."""

    steps: int = _f(0, min=0, help="PGD iterations (0 = off; Rice et al. 2020: 10)")
    eps: float = _f(8 / 255, min=0.0, min_exclusive=True, help="Linf budget in [0, 1] pixel units (8/255 allowed)")
    step_size: Optional[float] = _f(None, min=0.0, min_exclusive=True, help="PGD step; null = 2.5 * eps / steps")
    max_examples: int = _f(1000, min=1, help="attack N validation images, evenly spaced over the split")


@dataclass
class CertifiedConfig:
    """Certified (bound-propagation) training, Linf (robust_vision.training.certified, docs/VERIFY.md)."""

    method: Literal["none", "ibp", "crown-ibp"] = _f(
        "none", help="ibp: cross-entropy of IBP margin bounds (Gowal et al. 2018); crown-ibp: of CROWN-IBP bounds "
                     "mixed with IBP's (Zhang et al. 2020); none = off")
    eps: float = _f(0.1, min=0.0, min_exclusive=True, help="training budget (Linf, pixel units); recipes train "
                                                          "above the test budget (CROWN-IBP MNIST: 0.4 for 0.3)")
    warmup_epochs: float = _f(1.0, min=0.0, help="natural training (eps = 0) before the ramp")
    ramp_epochs: float = _f(10.0, min=0.0, min_exclusive=True, help="epochs over which eps grows to its value")
    schedule: Literal["smooth", "linear"] = _f(
        "smooth", help="eps ramp: smooth = polynomial (power 4) for the first quarter, then linear (Shi et al. 2021)")
    kappa_start: float = _f(1.0, min=0.0, max=1.0, help="weight of the natural loss at the start of the ramp")
    kappa_end: float = _f(0.0, min=0.0, max=1.0, help="... and from its end (the bound loss gets 1 - kappa)")
    beta_start: float = _f(1.0, min=0.0, max=1.0, help="crown-ibp: weight of the CROWN-IBP bound (vs IBP) at the ramp's start")
    beta_end: float = _f(0.0, min=0.0, max=1.0, help="crown-ibp: ... and from its end")
    ibp_init: bool = _f(True, help="IBP initialisation (Shi et al. 2021): kernels ~ N(0, 2 pi / fan_in^2), biases 0")
    regularizer_weight: float = _f(0.5, min=0.0, help="Shi et al.'s tightness + ReLU-balance regulariser weight at "
                                                      "the ramp's start, decaying to 0 with eps (0 = off)")
    regularizer_tau: float = _f(0.5, min=0.0, min_exclusive=True, help="target of both regularisers (paper: 0.5)")


@dataclass
class TrainingConfig:
    seed: int = _f(0, help="seed of initialisation, shuffling, dropout and augmentation")
    learning_rule: Literal["backprop", "hebbian", "sgd_mse"] = _f(
        "backprop", help="backprop (optax, any model) or the crossbar model's local rules: hebbian, sgd_mse")
    hebbian: HebbianConfig = field(default_factory=HebbianConfig, metadata={"help": "hebbian / sgd_mse options"})
    epochs: int = _f(30, min=1, help="number of epochs")
    batch_size: int = _f(128, min=1, help="global batch size (split over all devices)")
    eval_batch_size: int = _f(512, min=1, help="batch size of validation / evaluation passes")
    optimizer: Literal["adam", "adamw", "sgd"] = _f("adam", help="optimizer (Optax)")
    learning_rate: float = _f(1e-3, min=0.0, min_exclusive=True, help="peak learning rate")
    momentum: float = _f(0.9, min=0.0, max=1.0, help="sgd momentum")
    nesterov: bool = _f(False, help="sgd: Nesterov momentum")
    weight_decay: float = _f(0.0, min=0.0, help="adamw: decoupled weight decay; adam/sgd: L2 added to the gradient")
    lr_schedule: Literal["constant", "cosine", "warmup_cosine", "cyclic", "piecewise"] = _f(
        "constant", help="learning-rate schedule (Optax): cyclic = linear 0 -> learning_rate at warmup_epochs -> 0 at "
                         "the end (Wong et al. 2020); piecewise = learning_rate times lr_decay_factor at each of "
                         "lr_milestones (Rice et al. 2020)")
    warmup_epochs: float = _f(0.0, min=0.0, help="warmup_cosine: linear warm-up length in epochs; cyclic: epoch of "
                                                 "the peak (fractions allowed)")
    lr_milestones: list[float] = _f(factory=list, min=0.0, help="piecewise: epochs (fractions allowed) at which the "
                                                                "learning rate is multiplied by lr_decay_factor")
    lr_decay_factor: float = _f(0.1, min=0.0, max=1.0, min_exclusive=True,
                                help="piecewise: factor applied at each milestone")
    grad_clip_norm: Optional[float] = _f(None, min=0.0, min_exclusive=True, help="clip the global gradient norm (null = off)")

    loss_type: Literal["cross_entropy", "label_smoothing", "margin", "focal", "combined"] = _f(
        "cross_entropy", help="training loss (see robust_vision.losses)")
    label_smoothing: float = _f(0.1, min=0.0, max=1.0, help="label_smoothing: smoothing factor")
    margin_lambda: float = _f(1.0, min=0.0, help="margin: hinge margin on z_y - max_{j!=y} z_j")
    focal_alpha: float = _f(0.25, min=0.0, max=1.0, help="focal: class weight alpha")
    focal_gamma: float = _f(2.0, min=0.0, help="focal: focusing exponent gamma")
    loss_weights: dict[str, float] = _f(factory=lambda: {"label_smoothing": 1.0, "margin": 0.5},
                                        help="combined: weight of each component loss (names of other losses)")

    use_mixup: bool = _f(False, help="mixup augmentation")
    mixup_alpha: float = _f(0.2, min=0.0, min_exclusive=True, help="mixup: Beta(alpha, alpha) mixing coefficient")
    precision: Literal["float32", "bf16"] = _f(
        "float32", help="train-step compute: bf16 = forward and backward in bfloat16 with parameters, optimizer state "
                        "and batch statistics kept float32 and the loss in float32 (no loss scaling)")
    augment_flip: bool = _f(False, help="random horizontal flip (on device)")
    augment_crop_padding: int = _f(0, min=0, help="random crop after zero-padding by this many pixels (0 = off)")
    noise_augment_std: float = _f(0.0, min=0.0, help="add N(0, std^2) to training images (0 = off); pair with --certify at sigma = std")
    noise_augment_clip: bool = _f(True, help="clip noisy training images to [0, 1]; false = the unclipped isotropic noise of randomized smoothing")
    adversarial: AdversarialConfig = field(default_factory=lambda: AdversarialConfig(),
                                           metadata={"help": "adversarial training (pgd / trades) or augmentation"})
    certified: CertifiedConfig = field(default_factory=lambda: CertifiedConfig(),
                                       metadata={"help": "certified training by bound propagation (ibp / crown-ibp)"})
    augmix: AugMixConfig = field(default_factory=lambda: AugMixConfig(),
                                 metadata={"help": "AugMix + Jensen-Shannon consistency (not with adversarial training)"})
    regularizers: RegularizerConfig = field(default_factory=lambda: RegularizerConfig(),
                                            metadata={"help": "Jacobian and spectral penalties added to the loss"})
    init_from: Optional[str] = _f(None, help="fine-tune: initialise from this run directory or checkpoint (its evaluation weights)")
    freeze_stages: int = _f(0, min=0, help="fine-tune: the optimizer leaves the first k stages of the model untouched")

    ema_enabled: bool = _f(False, help="keep an exponential moving average of the parameters and evaluate with it")
    ema_decay: float = _f(0.99, min=0.0, max=1.0, help="EMA decay per step")

    val_attack: ValAttackConfig = field(default_factory=lambda: ValAttackConfig(),
                                        metadata={"help": "PGD accuracy of the validation split each validation "
                                                          "(metrics.csv val_pgd_accuracy; early stopping as Rice et al. 2020)"})
    early_stop_patience: Optional[int] = _f(None, min=1, help="stop after this many validations without a better "
                                                             "best_metric (null = train every epoch); the best "
                                                             "checkpoint is kept either way")
    eval_every: int = _f(1, min=1, help="validate every N epochs (the last epoch is always validated)")
    save_every: int = _f(5, min=1, help="keep a periodic checkpoint every N epochs (the latest is always kept)")
    best_metric: str = _f("val_accuracy", help="metrics.csv column that picks the best checkpoint")
    best_mode: Literal["max", "min"] = _f("max", help="whether a larger or smaller best_metric is better")
    checkpoint_dir: str = _f("./runs/default", help="run directory: config.yaml, metrics.csv, checkpoints/, plots/")
    log_dir: Optional[str] = _f(None, help="accepted for seed configs; logs are written to checkpoint_dir")
    progress_bar: bool = _f(True, help="show a progress bar during each epoch")
    compile_cache_dir: Optional[str] = _f(None, help="JAX persistent compilation cache (null = "
                                                     "~/.cache/robust-vision/jax; off = disabled; the "
                                                     "ROBUST_VISION_CACHE_DIR environment variable wins)")
    write_figures: bool = _f(True, help="draw the training curves (loss, accuracy, SNR per epoch) into the run's plots/ at the end")


@dataclass
class EvaluationConfig:
    noise_types: list[str] = _f(factory=lambda: ["gaussian", "salt_pepper", "fog", "occlusion"],
                                help="corruptions of the robustness grid (robust_vision.corruptions registry)")
    noise_levels: list[float] = _f(factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.7],
                                   help="severities in [0, 1] (0 = clean)")
    n_draws: int = _f(1, min=1, help="noise draws per image and condition")
    split: Literal["train", "val", "test"] = _f("test", help="split the evaluator uses")
    batch_size: int = _f(512, min=1, help="images per compiled evaluation batch")
    seed: int = _f(0, help="seed of the noise draws")
    compute_snr: bool = _f(True, help="report SNR (odds of the true class vs its strongest competitor)")
    snr_threshold: float = _f(10.0, min=0.0, help="ConfidenceMonitor: SNR below this -> REVIEW_REQUIRED")
    ece_bins: int = _f(15, min=1, help="bins of the expected calibration error")
    output_dir: str = _f("./results", help="where robust-vision-eval writes tables and figures")
    generate_plots: bool = _f(True, help="draw figures after evaluation")
    plot_style: Literal["publication", "default"] = _f("publication", help="matplotlib style of the figures")
    dpi: int = _f(150, min=30, max=1200, help="resolution of PNG figures")
    format: list[str] = _f(factory=lambda: ["png", "pdf"], help="figure file formats (png, pdf, svg)")
    # Robustness suite (docs/EVALUATION.md). Corruptions, attacks and certification are off
    # by default (they cost minutes on large sets); calibration is one forward pass per noise
    # condition, so it is on.
    suite: Literal["none", "imagenet-c", "imagenet-c-all", "cifar10-c", "cifar100-c", "tiny-imagenet-c"] = _f(
        "none", help="corruption benchmark: imagenet-c (15 corruptions, mCE), imagenet-c-all (+4 held-out) or none; "
                     "with suite_data, the layout of published files: cifar10-c, cifar100-c, imagenet-c, "
                     "tiny-imagenet-c")
    suite_data: Optional[str] = _f(
        None, help="folder of published pre-corrupted files (CIFAR-10-C .npy files, an ImageNet-C tree; docs/DATA.md) "
                   "to evaluate instead of generating the corruptions (null = generate them)")
    severities: list[int] = _f(factory=lambda: [1, 2, 3, 4, 5], min=1, max=5,
                               help="ImageNet-C severities to evaluate (integers 1..5; CE sums over them)")
    corruption_scale: Literal["auto", "imagenet", "cifar"] = _f(
        "auto", help="ImageNet-C parameter table; auto = cifar below 64 px on the shorter side, else imagenet")
    reference_checkpoint: Optional[str] = _f(
        None, help="run directory of the reference model for CE / mCE / relative mCE (null = errors only, no CE)")
    attacks: list[Literal["fgsm", "pgd", "apgd", "sparse", "noise", "apgd-t", "apgd-dlr", "fab-t", "square",
                          "autoattack", "autoattack-rand"]] = _f(
        factory=list, help="adversarial attacks to run (fgsm, pgd, apgd, sparse, noise, apgd-t, apgd-dlr, fab-t, "
                           "square, autoattack, autoattack-rand); empty = off")
    attack_eps: list[float] = _f(factory=lambda: [k / 255 for k in (0, 1, 2, 4, 8, 16, 32)], min=0.0,
                                 help="fgsm / pgd / apgd budgets in [0, 1] pixel units (Linf, or L2 radius with "
                                      "attack_norm: l2)")
    attack_norm: Literal["linf", "l2"] = _f("linf", help="threat model of pgd / apgd (fgsm is Linf only)")
    attack_steps: Optional[int] = _f(None, min=1, help="iterations of pgd / apgd / sparse / noise; null = each "
                                                        "attack's default (10 / 100 / 50 / 100)")
    attack_sparse_fractions: list[float] = _f(factory=lambda: [0.0, 0.005, 0.01, 0.02, 0.05], min=0.0, max=1.0,
                                              help="sparse attack budgets: fraction of pixels recoloured")
    attack_noise_radii: list[float] = _f(factory=lambda: [0.0, 0.5, 1.0, 2.0], min=0.0,
                                         help="noise attack budgets: L2 radius of the perturbation (pixel units)")
    attack_max_examples: Optional[int] = _f(None, min=1, help="attack only the first N examples of the split "
                                                               "(null = all)")
    certify: bool = _f(False, help="certified L2 accuracy by randomized smoothing (Cohen et al. 2019)")
    certify_sigma: list[float] = _f(factory=lambda: [0.25], min=0.0, min_exclusive=True,
                                    help="smoothing noise std (pixel units); one certification per value")
    certify_n0: int = _f(100, min=1, help="noise draws that select the smoothed prediction")
    certify_n: int = _f(10_000, min=1, help="noise draws that bound its probability (radius <= sigma * "
                                            "Phi^-1(alpha^(1/n)))")
    certify_alpha: float = _f(0.001, min=0.0, max=1.0, min_exclusive=True,
                              help="failure probability of each certificate")
    certify_max_examples: int = _f(100, min=1, help="certify the first N examples of the split (it costs n "
                                                    "forward passes per example)")
    verify: list[Literal["ibp", "crown-ibp", "crown", "alpha-crown"]] = _f(
        factory=list, help="deterministic certification by bound propagation (docs/VERIFY.md) at every attack_eps "
                           "under attack_norm: ibp, crown-ibp, crown, alpha-crown; empty = off")
    verify_max_examples: int = _f(200, min=1, help="verify the first N examples of the split")
    verify_batch_size: int = _f(32, min=1, help="images per bound computation (CROWN's memory grows with it)")
    verify_alpha_steps: int = _f(20, min=1, help="alpha-CROWN: Adam steps on the ReLU slopes")
    calibration: bool = _f(True, help="reliability bins, temperature scaling, conformal sets and selective "
                                      "accuracy per noise condition (validation split calibrates)")
    conformal_alpha: list[float] = _f(factory=lambda: [0.1], min=0.0, max=1.0, min_exclusive=True,
                                      help="miscoverage levels of the conformal prediction sets (target "
                                           "coverage 1 - alpha)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    metadata: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)


# Seed-document key -> current key. Moved before validation.
LEGACY_KEYS: dict[str, str] = {
    "training.dataset_name": "data.dataset_name",
    "training.image_size": "data.image_size",
    "training.checkpoint_every": "training.save_every",
    "training.margin": "training.margin_lambda",
    "training.margin_weight": "training.loss_weights.margin",
}

# Cross-field value sets that are registries elsewhere; validated lazily (see validate_names).
_FIGURE_FORMATS = ("png", "pdf", "svg")


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg)}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


# A number written as a fraction, "8/255" (attack budgets are quoted that way).
_FRACTION = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*/\s*([0-9]+(?:\.[0-9]*)?)")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type or raise a one-line ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
        return value
    if origin is list:
        (arg,) = typing.get_args(tp)
        if key.endswith("image_size") and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]  # a square size may be given as one integer
        if key.endswith(("format", "noise_types")) and isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping")
        _, vtype = typing.get_args(tp)
        return {str(k): _convert(v, vtype, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping of {tp.__name__} keys")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected true/false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}: got {value!r}; expected a finite number")
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; budgets are written 8/255
            fraction = _FRACTION.fullmatch(value.strip())
            if fraction and float(fraction[2]) != 0:
                return _convert(float(fraction[1]) / float(fraction[2]), float, key)
            try:
                return _convert(float(value), float, key)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected a number (or a fraction such as 8/255)")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected a string")
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_range(value: Any, meta: dict, key: str) -> None:
    values = value if isinstance(value, list) else [value]
    lo, hi = meta.get("min"), meta.get("max")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v is None:
            continue
        low_bad = lo is not None and (v <= lo if meta.get("min_exclusive") else v < lo)
        if low_bad or (hi is not None and v > hi):
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            bracket = "(" if meta.get("min_exclusive") else "["
            raise ConfigError(f"{key}: got {v!r}; expected a value in {bracket}{lo_s}, {hi_s}]")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"{full}: unknown key; valid keys in '{prefix or 'top level'}': {', '.join(fields)}")
        converted = _convert(value, hints[key], full)
        if isinstance(converted, dict) and fields[key].default_factory is not dataclasses.MISSING:
            # Mapping fields (loss_weights) merge onto their defaults: setting one weight keeps the others.
            converted = {**fields[key].default_factory(), **converted}
        _check_range(converted, fields[key].metadata, full)
        kwargs[key] = converted
    return cls(**kwargs)


def _move_legacy_keys(raw: dict) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for old, new in LEGACY_KEYS.items():
        osec, okey = old.split(".", 1)
        section = raw.get(osec)
        if not isinstance(section, dict) or okey not in section:
            continue
        value = section.pop(okey)
        _set_dotted(raw, new, value, create=True, only_if_absent=True, legacy=old)
    return raw


def _set_dotted(raw: dict, dotted: str, value: Any, *, create: bool = True,
                only_if_absent: bool = False, legacy: str | None = None) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
        node = child
    if only_if_absent and parts[-1] in node and node[parts[-1]] != value:
        raise ConfigError(f"{legacy}: set together with {dotted} to a different value; keep only {dotted}")
    node[parts[-1]] = value


def _cross_checks(cfg: Config) -> None:
    for fmt in cfg.evaluation.format:
        if fmt not in _FIGURE_FORMATS:
            raise ConfigError(f"evaluation.format: got {fmt!r}; expected some of {', '.join(_FIGURE_FORMATS)}")
    for lvl in cfg.evaluation.noise_levels:
        if not 0.0 <= lvl <= 1.0:
            raise ConfigError(f"evaluation.noise_levels: got {lvl!r}; expected severities in [0, 1]")
    if len(set(cfg.evaluation.severities)) != len(cfg.evaluation.severities) or not cfg.evaluation.severities:
        raise ConfigError(f"evaluation.severities: got {cfg.evaluation.severities!r}; expected distinct integers "
                          "in 1..5")
    for a in cfg.evaluation.conformal_alpha:
        if not a < 1.0:
            raise ConfigError(f"evaluation.conformal_alpha: got {a!r}; expected miscoverage levels in (0, 1)")
    size = cfg.data.image_size
    if size is not None and (len(size) != 2 or min(size) < 4):
        raise ConfigError(f"data.image_size: got {size!r}; expected [H, W] with H, W >= 4 (or one integer)")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels: got {cfg.data.channels!r}; expected 1, 3 or null")
    clip = cfg.training.hebbian.clip_range
    if clip is not None and (len(clip) != 2 or clip[0] >= clip[1]):
        raise ConfigError(f"training.hebbian.clip_range: got {clip!r}; expected [lo, hi] with lo < hi, or null")
    if cfg.training.regularizers.jacobian_projections == 0:
        raise ConfigError("training.regularizers.jacobian_projections: got 0; expected a positive number of "
                          "projections or -1 for the exact Jacobian norm")
    adv = cfg.training.adversarial
    if adv.method == "augment" and adv.augment_source is None and cfg.training.init_from is None:
        raise ConfigError("training.adversarial.augment_source: adversarial augmentation attacks a trained model; "
                          "set training.adversarial.augment_source (or training.init_from) to its run directory")
    if cfg.training.lr_schedule == "piecewise" and not cfg.training.lr_milestones:
        raise ConfigError("training.lr_milestones: the piecewise schedule needs the epochs at which the learning rate "
                          "drops, e.g. [100, 150]; set them or pick another training.lr_schedule")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction: must be < 1 so that a training split remains")


def config_from_dict(raw: dict | None) -> Config:
    """Validate a nested mapping (as read from YAML) and return a :class:`Config`."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"top level: got {type(raw).__name__}; expected a mapping of sections "
                          "(model, training, data, evaluation)")
    cfg = _build(Config, _move_legacy_keys(raw), "")
    _cross_checks(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=c`` into the dotted key and the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--override {text!r}: expected KEY=VALUE, e.g. training.margin_lambda=1.0")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--override {text!r}: expected a dotted key such as training.epochs")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=c`` overrides to a raw (unvalidated) mapping, in order."""
    raw = _move_legacy_keys(raw or {})
    sections = {f.name for f in dataclasses.fields(Config)} - {"metadata", "sweep"}
    for text in overrides or []:
        key, value = parse_override(text)
        key = LEGACY_KEYS.get(key, key)
        if key in sections and not isinstance(value, dict):
            raise ConfigError(f"--override {text!r}: '{key}' is a section, not a key; set one of its keys, "
                              f"e.g. --override {key}.<key>=VALUE (see the README's configuration reference)")
        _set_dotted(raw, key, value)
    return raw


# Bound on what a config may expand to: YAML aliases share nodes, so a 1 KB file can stand for
# billions of values ("billion laughs") that save_config / yaml.dump would then write out. Real
# configs have a few hundred values; 100 000 leaves room for long metadata lists.
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_BYTES = 10 * 2**20


def _check_expansion(raw: Any, where: str, limit: int = MAX_CONFIG_NODES) -> None:
    """Count the values of ``raw`` with every alias expanded, stopping at ``limit``; a value that
    contains itself (a recursive alias) is an error too. Cost: O(min(expanded size, limit))."""
    count = 0
    stack: list[tuple[Any, tuple[int, ...]]] = [(raw, ())]
    while stack:
        node, ancestors = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{where}: expands to more than {limit:,} values (nested YAML aliases?); "
                              "write the values out or remove the aliases")
        if isinstance(node, (dict, list)):
            if id(node) in ancestors:
                raise ConfigError(f"{where}: a YAML alias refers to a value that contains it (recursive alias); "
                                  "remove the recursion")
            inner = (*ancestors, id(node))
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, inner) for child in children)


def read_config_file(path: str | Path) -> dict:
    """Read and check one YAML config file: it exists, is UTF-8 text, valid YAML, a non-empty
    mapping of sections, and bounded in what its aliases expand to. Errors name the file."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ConfigError(f"config file {name!r} not found; pass an existing YAML file, "
                          "e.g. configs/quickstart.yaml")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name!r} is {path.stat().st_size / 2**20:.0f} MiB; a config is a small "
                          "YAML file (pass the right file)")
    from robust_vision.io import decode_text  # no heavy imports: preflight runs before JAX

    text = decode_text(path.read_bytes(), f"config file {name!r} is a binary file, not YAML text; pass a YAML "
                       "config, e.g. configs/quickstart.yaml",
                       f"config file {name!r} is not UTF-8 text; pass a YAML config, e.g. configs/quickstart.yaml",
                       ConfigError)
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config file {name!r}: nesting too deep (recursive YAML alias?); "
                          "remove the recursion") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {name!r} is not valid YAML{where}; fix the syntax") from None
    if raw is None:
        raise ConfigError(f"config file {name!r} is empty; a config needs at least one section "
                          "(model, training, data, evaluation), e.g. copy configs/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {name!r}: the top level is a {type(raw).__name__}; expected a mapping "
                          "of sections (model, training, data, evaluation)")
    _check_expansion(raw, f"config file {name!r}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides))


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config exactly as used, so a run can be reproduced from its directory."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key: the README's configuration reference."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section.name}.{f.name}", _type_name(hints[f.name]), repr(default), f.metadata.get("help", "")))
    return rows


# Public names of the schema machinery for other YAML schemas built the same way (the
# research study settings, robust_vision.research.settings): same errors, same ranges.
config_field = _f
build_section = _build

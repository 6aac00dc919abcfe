"""Spectral probing: eigenspectrum, power-law fit, table and figure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_vision.evaluation.spectrum import eigenspectrum, fit_power_law, spectrum_table
from robust_vision.viz.spectrum import plot_spectrum


def _features(alpha: float, n: int = 20000, d: int = 64, seed: int = 0) -> np.ndarray:
    """(n, d) Gaussian features whose covariance has eigenvalues n^-alpha in a random basis."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    return ((rng.normal(size=(n, d)) * np.sqrt(lam)) @ q.T).astype(np.float32)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_power_law_exponent_recovered(alpha):
    eigs = eigenspectrum(_features(alpha))
    assert eigs.shape == (64,) and np.all(np.diff(eigs) <= 0)
    fit = fit_power_law(eigs, fit_range=(0, 50))
    assert abs(fit["alpha"] - alpha) < 0.05
    assert fit["r2"] > 0.99 and fit["n_points"] == 50
    assert abs(fit["intercept"]) < 0.1  # l_1 = 1


def test_eigenspectrum_matches_known_covariance_and_accepts_jax():
    x = jax.random.normal(jax.random.key(0), (5000, 3)) * jnp.array([3.0, 2.0, 1.0])
    eigs = eigenspectrum(x)
    np.testing.assert_allclose(eigs, [9.0, 4.0, 1.0], rtol=0.06)
    # images (N, H, W, C) are flattened; constant features give a zero spectrum
    np.testing.assert_allclose(eigenspectrum(np.ones((4, 2, 2, 1))), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        eigenspectrum(np.ones((1, 5)))


def test_fit_is_exact_on_exact_power_law_and_skips_zeros():
    eigs = 5.0 * np.arange(1, 101, dtype=np.float64) ** -1.3
    eigs[-5:] = 0.0
    fit = fit_power_law(eigs, fit_range=(10, None))
    np.testing.assert_allclose([fit["alpha"], fit["intercept"], fit["r2"]], [1.3, np.log(5.0), 1.0], atol=1e-9)
    assert fit["n_points"] == 85 and fit["end"] == 100
    with pytest.raises(ValueError, match="fit_range"):
        fit_power_law(eigs, fit_range=(50, 50))


def test_table_and_plot(tmp_path):
    eigs = np.array([4.0, 2.0, 1.0, 1.0])
    rows = spectrum_table(eigs)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["normalized"] for r in rows], [1.0, 0.5, 0.25, 0.25])
    np.testing.assert_allclose([r["cumulative_variance"] for r in rows], [0.5, 0.75, 0.875, 1.0])
    spectrum = eigenspectrum(_features(1.0, n=2000, d=32))
    fit = fit_power_law(spectrum, (0, 24))
    png = plot_spectrum(spectrum, fit, tmp_path / "spec.png")
    pdf = plot_spectrum(spectrum, None, tmp_path / "sub" / "spec.pdf", reference_alpha=None)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"

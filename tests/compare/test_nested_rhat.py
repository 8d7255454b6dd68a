"""Nested R-hat (Margossian et al. 2024): a hand computation, chains known to disagree,
agreement, and argument checks."""

import numpy as np
import pytest

from pyro_dgm.compare import nested_rhat
from pyro_dgm.compare._arviz import arviz
from pyro_dgm.compare.nested_rhat import nested_rhat_array


def test_hand_computation():
    # K = 2 superchains of M = 2 chains, N = 3 draws
    x = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [0.0, 0.0, 3.0], [5.0, 6.0, 7.0]])
    # chain means 2, 3, 1, 6; superchain means 2.5, 3.5; overall 3
    b = ((2.5 - 3.0) ** 2 + (3.5 - 3.0) ** 2) / 1  # 0.5
    b_tilde = [((2 - 2.5) ** 2 + (3 - 2.5) ** 2) / 1, ((1 - 3.5) ** 2 + (6 - 3.5) ** 2) / 1]
    w_tilde = [(1.0 + 1.0) / 2, (3.0 + 1.0) / 2]  # within-chain variances (ddof 1)
    w = np.mean([bt + wt for bt, wt in zip(b_tilde, w_tilde, strict=True)])
    expected = np.sqrt(1 + b / w)
    assert nested_rhat_array(x, 2) == pytest.approx(expected, rel=1e-12)


def test_one_chain_per_superchain_is_classical_rhat_without_its_n_term():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 50)) + np.array([0.0, 0.0, 0.5, 0.0])[:, None]
    b_over_n = x.mean(1).var(ddof=1)
    w = x.var(1, ddof=1).mean()
    assert nested_rhat_array(x, 4) == pytest.approx(np.sqrt(1 + b_over_n / w))


def test_agreeing_and_disagreeing_chains():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(64, 100, 3))
    assert np.all(nested_rhat_array(good, 8) < 1.01)
    bad = good.copy()
    bad[:8] += 1.0  # one superchain stuck elsewhere
    r = nested_rhat_array(bad, 8)
    assert np.all(r > 1.03)  # expected sqrt(1 + 1/8) = 1.06
    # short chains: 256 chains of 10 draws from one superchain's wrong mode only
    short = rng.normal(size=(256, 10))
    assert nested_rhat_array(short, 16) < 1.01
    short[:16] += 1.0  # expected sqrt(1 + 1/16) = 1.03
    assert nested_rhat_array(short, 16) > 1.01


def test_on_inference_data():
    rng = np.random.default_rng(2)
    idata = arviz.from_dict(posterior={"a": rng.normal(size=(8, 40)),
                                       "b": rng.normal(size=(8, 40, 2))})
    out = nested_rhat(idata, 4)
    assert out["a"].shape == () and out["b"].shape == (2,)
    assert float(out["a"]) == pytest.approx(
        nested_rhat_array(idata.posterior["a"].values, 4))
    assert set(nested_rhat(idata, 2, var_names=["a"]).data_vars) == {"a"}


def test_bad_arguments():
    x = np.zeros((6, 10))
    with pytest.raises(ValueError, match="num_superchains"):
        nested_rhat_array(x, 4)
    with pytest.raises(ValueError, match="num_superchains"):
        nested_rhat_array(x, 1)
    with pytest.raises(ValueError, match="draws"):
        nested_rhat_array(np.zeros(5), 1)
    idata = arviz.from_dict(posterior={"a": np.zeros((4, 5))})
    with pytest.raises(ValueError, match="var_names"):
        nested_rhat(idata, 2, var_names=["zz"])

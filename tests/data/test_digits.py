import numpy as np
import pytest
import sklearn.datasets
import torch

from pyro_dgm.data import load_digits
from pyro_dgm.data.digits import DIGITS_TEST_SIZE, _split_indices


@pytest.fixture(scope="module")
def raw():
    bunch = sklearn.datasets.load_digits()
    return bunch.data, bunch.target


def test_split_is_fixed_disjoint_and_complete(raw):
    n = raw[0].shape[0]
    train, test = _split_indices("train", n), _split_indices("test", n)
    assert len(test) == DIGITS_TEST_SIZE == 297 and len(train) == n - 297 == 1500
    assert not set(train) & set(test)
    assert sorted(np.concatenate([test, train])) == list(range(n))
    assert np.array_equal(np.concatenate([test, train]), _split_indices("all", n))
    assert np.array_equal(train, _split_indices("train", n))   # same every call
    # every class is in both splits
    assert set(raw[1][test]) == set(raw[1][train]) == set(range(10))


def test_fixed_binarization_thresholds_at_8(raw):
    x, y = load_digits(split="test", return_target=True, dtype=torch.float64)
    index = _split_indices("test", raw[0].shape[0])
    assert x.shape == (297, 64) and x.dtype == torch.float64 and y.dtype == torch.long
    assert torch.equal(x, torch.as_tensor(raw[0][index] >= 8, dtype=torch.float64))
    assert torch.equal(y, torch.as_tensor(raw[1][index]))
    assert torch.equal(load_digits(threshold=1), load_digits(threshold=1))
    assert load_digits(threshold=1).mean() > load_digits().mean()


def test_scaled_and_dynamic_binarization(raw):
    p = load_digits(binarize=None, dtype=torch.float64)
    index = _split_indices("train", raw[0].shape[0])
    assert torch.allclose(p, torch.as_tensor(raw[0][index] / 16))
    assert p.min() == 0 and p.max() == 1
    draws = [load_digits(binarize="dynamic", generator=torch.Generator().manual_seed(s))
             for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert set(draws[0].unique().tolist()) == {0.0, 1.0}
    assert draws[0].dtype == torch.get_default_dtype()
    # 96,000 Bernoulli draws: the mean matches E = mean(p) to within 5 sd
    sd = float((p * (1 - p)).sum().sqrt() / p.numel())
    assert abs(float(draws[0].mean() - p.mean())) < 5 * sd
    zero = p == 0
    assert (draws[0][zero] == 0).all() and (draws[0][p == 1] == 1).all()


def test_classes_and_max_rows_select_within_the_split():
    x, y = load_digits(classes=[3, 7], return_target=True)
    assert set(y.tolist()) == {3, 7} and len(x) == len(y)
    full, full_y = load_digits(return_target=True)
    assert torch.equal(x, full[(full_y == 3) | (full_y == 7)])
    assert torch.equal(load_digits(classes=[3, 7], max_rows=10), x[:10])
    assert len(load_digits(split="all")) == 1797


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="binarize"):
        load_digits(binarize="otsu")
    with pytest.raises(ValueError, match="split"):
        load_digits(split="valid")
    with pytest.raises(ValueError, match="threshold"):
        load_digits(threshold=0)
    with pytest.raises(ValueError, match="threshold"):
        load_digits(threshold=17)
    with pytest.raises(ValueError, match="classes"):
        load_digits(classes=[10])
    with pytest.raises(ValueError, match="max_rows"):
        load_digits(max_rows=0)
    with pytest.raises(ValueError, match="dtype"):
        load_digits(dtype=torch.int64)

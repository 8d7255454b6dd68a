r"""scikit-learn's 8×8 handwritten digits as flat torch tensors, binarized or not.

The data (1797 images, pixel intensities 0..16, UCI "optdigits" test set) ship with
scikit-learn, so nothing is downloaded at run time. Each image is a row of 64 pixels in
row-major order (``x.reshape(-1, 8, 8)`` gives the images back).

Binarization (``binarize=``):

- ``"fixed"``: :math:`x_{ni} = \mathbb 1[\text{intensity}_{ni} \ge \text{threshold}]`, with
  threshold 8 by default (half of the maximum 16); the same every call.
- ``"dynamic"``: :math:`x_{ni} \sim \mathrm{Bernoulli}(\text{intensity}_{ni} / 16)`, drawn
  afresh on every call from ``generator`` (or torch's global generator). For a new draw
  each epoch, load the probabilities once with ``binarize=None`` and call
  ``torch.bernoulli(p, generator=g)`` per epoch.
- ``None``: the intensities scaled to :math:`[0, 1]` (``intensity / 16``).

The train/test split is fixed: a permutation of the 1797 rows by numpy's
``default_rng(0)``; the first :data:`DIGITS_TEST_SIZE` (297) rows of it are the test set,
the remaining 1500 the training set. Every option (classes, ``max_rows``) selects within
that split, so a test image never leaks into a training subset.

Example::

    >>> x = load_digits()                        # (1500, 64) binary training images
    >>> x_test, y_test = load_digits(split="test", return_target=True)
    >>> x_small = load_digits(classes=[0, 1], max_rows=100)   # 100 zeros and ones
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_dgm._validation import check_choice, check_int

__all__ = ["DIGITS_IMAGE_SHAPE", "DIGITS_MAX_INTENSITY", "DIGITS_TEST_SIZE", "load_digits"]

#: Height and width of one image; a row of the data holds ``8 * 8 = 64`` pixels.
DIGITS_IMAGE_SHAPE = (8, 8)
#: Largest pixel intensity in the data.
DIGITS_MAX_INTENSITY = 16
#: Rows in the fixed test split (the training split holds the other 1500).
DIGITS_TEST_SIZE = 297

_SPLITS = ("train", "test", "all")
_BINARIZE = ("fixed", "dynamic", None)


def _split_indices(split: str, num_rows: int) -> np.ndarray:
    """Row indices of ``split`` in the fixed shuffled order."""
    order = np.random.default_rng(0).permutation(num_rows)
    if split == "test":
        return order[:DIGITS_TEST_SIZE]
    if split == "train":
        return order[DIGITS_TEST_SIZE:]
    return order


def load_digits(
    *,
    binarize: str | None = "fixed",
    split: str = "train",
    threshold: float = 8,
    classes=None,
    max_rows: int | None = None,
    return_target: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
):
    """Load the 8×8 digits as a ``(rows, 64)`` tensor.

    :param binarize: ``"fixed"`` (intensity ``>= threshold``), ``"dynamic"`` (Bernoulli with
        ``p = intensity / 16``) or ``None`` (``intensity / 16`` in ``[0, 1]``).
    :param split: ``"train"`` (1500 rows), ``"test"`` (297 rows) or ``"all"`` (1797 rows,
        in the fixed shuffled order).
    :param threshold: intensity threshold for ``binarize="fixed"``, in ``(0, 16]``.
    :param classes: keep only these digit classes (e.g. ``[0, 1]``).
    :param max_rows: keep the first ``max_rows`` rows (of the split, after ``classes``).
    :param return_target: also return the digit labels (``torch.long``).
    :param generator: random source for ``binarize="dynamic"`` (on ``device``).
    :param dtype: floating dtype of the images (default ``torch.get_default_dtype()``).
    :param device: device of the returned tensors.
    :return: ``x`` or ``(x, y)``.
    """
    import sklearn.datasets

    check_choice("binarize", binarize, _BINARIZE)
    check_choice("split", split, _SPLITS)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not 0 < threshold <= DIGITS_MAX_INTENSITY:
        raise ValueError(f"threshold must lie in (0, {DIGITS_MAX_INTENSITY}], got {threshold}")
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")

    bunch = sklearn.datasets.load_digits()
    data = np.asarray(bunch.data, dtype=np.float64)
    target = np.asarray(bunch.target, dtype=np.int64)
    index = _split_indices(split, data.shape[0])
    data, target = data[index], target[index]
    if classes is not None:
        wanted = np.unique(np.asarray(list(classes), dtype=np.int64))
        if wanted.size == 0 or wanted.min() < 0 or wanted.max() > 9:
            raise ValueError(f"classes must be a non-empty subset of 0..9, got {classes!r}")
        keep = np.isin(target, wanted)
        data, target = data[keep], target[keep]
    if max_rows is not None:
        max_rows = check_int("max_rows", max_rows, minimum=1)
        data, target = data[:max_rows], target[:max_rows]

    if binarize == "fixed":
        x = torch.as_tensor(data >= threshold, dtype=dtype, device=device)
    else:
        x = torch.as_tensor(data / DIGITS_MAX_INTENSITY, dtype=dtype, device=device)
        if binarize == "dynamic":
            x = torch.bernoulli(x, generator=generator)
    if return_target:
        return x, torch.as_tensor(target, device=device)
    return x

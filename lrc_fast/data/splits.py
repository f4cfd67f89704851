"""Volume-level splits and seeded labelled subsets.

Splits work on cases (volumes), never on slices, so no volume has slices on both sides. The
LRC paper fine-tunes with ``|X_T| = 10`` and ``60`` labelled volumes: draw them with
:func:`labelled_subset` from the training side of :func:`split_cases`. For one seed the
subsets are nested (the 10 are among the 60), so results for different sizes are comparable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

#: Labelled-set sizes used in the LRC paper's fine-tuning experiments.
PAPER_LABELLED_SIZES = (10, 60)

C = TypeVar("C")


def _ordered(cases: Sequence[C]) -> list[C]:
    """Cases sorted by id, after checking that ids and image paths are unique."""
    cases = list(cases)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"cases must have unique case_id; repeated: {sorted({i for i in ids if ids.count(i) > 1})}")
    images = [(str(Path(c.image).resolve()), c.series_id) for c in cases]  # one file, two spellings
    if len(set(images)) != len(images):
        raise ValueError("cases must not list one image under two case ids; that would let one volume into both splits")
    return sorted(cases, key=lambda c: c.case_id)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int; got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy's default_rng); got {seed}")
    return int(seed)


def split_cases(
    cases: Sequence[C], n_test: int | None = None, test_fraction: float | None = None, seed: int = 0
) -> tuple[list[C], list[C]]:
    """Split cases into train and test by volume, reproducibly.

    The cases are sorted by ``case_id`` and permuted with ``numpy.random.default_rng(seed)``,
    so the split depends only on the ids and the seed, not on the file system's order.

    Parameters
    ----------
    cases : sequence of Case
        Each with a unique ``case_id`` and image.
    n_test : int, optional
        Number of test cases. Give this or ``test_fraction``.
    test_fraction : float, optional
        Fraction in (0, 1); rounded, at least 1 and at most ``len(cases) - 1``.
    seed : int
        Split seed.

    Returns
    -------
    (train, test) : lists of Case
        Disjoint, together all cases; each sorted by ``case_id``.

    Raises
    ------
    ValueError
        Repeated ids or images (one file under two paths counts as repeated), fewer than 2
        cases, both or neither of ``n_test`` and ``test_fraction``, sizes out of range, or a
        negative ``seed``.
    TypeError
        Non-int ``seed``.

    Example
    -------
    >>> from lrc_fast.data import Case
    >>> cases = [Case(f"pt_{i}", f"pt_{i}_ct.nii.gz", f"pt_{i}_oars.nii.gz") for i in range(90)]
    >>> train, test = split_cases(cases, n_test=20, seed=0)
    >>> len(train), len(test)
    (70, 20)
    """
    ordered = _ordered(cases)
    seed = _check_seed(seed)
    n = len(ordered)
    if n < 2:
        raise ValueError(f"cases must hold at least 2 cases to split; got {n}")
    if (n_test is None) == (test_fraction is None):
        raise ValueError("give exactly one of n_test and test_fraction")
    if test_fraction is not None:
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
        n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or not 1 <= n_test <= n - 1:
        raise ValueError(f"n_test must be an int in [1, {n - 1}]; got {n_test!r}")
    order = np.random.default_rng(seed).permutation(n)
    test_idx = set(order[: int(n_test)].tolist())
    train = [c for i, c in enumerate(ordered) if i not in test_idx]
    test = [c for i, c in enumerate(ordered) if i in test_idx]
    return train, test


def labelled_subset(cases: Sequence[C], n: int, seed: int = 0) -> list[C]:
    """Choose ``n`` labelled cases by seed; for one seed, smaller subsets lie inside larger ones.

    Parameters
    ----------
    cases : sequence of Case
        Candidates, usually the training side of :func:`split_cases`; all need a label.
    n : int
        Subset size, ``1 <= n <= len(cases)`` (the paper uses 10 and 60).
    seed : int
        Subset seed.

    Returns
    -------
    list of Case
        Sorted by ``case_id``.

    Raises
    ------
    ValueError
        Repeated ids or images, a case without label, ``n`` out of range, or a negative ``seed``.
    TypeError
        Non-int ``seed``.

    Example
    -------
    >>> from lrc_fast.data import Case
    >>> train = [Case(f"pt_{i}", f"pt_{i}_ct.nii.gz", f"pt_{i}_oars.nii.gz") for i in range(70)]
    >>> ten = labelled_subset(train, 10, seed=0); sixty = labelled_subset(train, 60, seed=0)
    >>> set(c.case_id for c in ten) <= set(c.case_id for c in sixty)
    True
    """
    ordered = _ordered(cases)
    seed = _check_seed(seed)
    unlabelled = [c.case_id for c in ordered if c.label is None]
    if unlabelled:
        raise ValueError(f"cases must all have labels; {unlabelled} have none")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(ordered):
        raise ValueError(f"n must be an int in [1, {len(ordered)}]; got {n!r}")
    order = np.random.default_rng(seed).permutation(len(ordered))[: int(n)]
    return [ordered[i] for i in sorted(order.tolist())]

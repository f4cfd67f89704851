"""Volume-level splits and seeded labelled subsets."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrc_fast.data import PAPER_LABELLED_SIZES, Case, labelled_subset, split_cases


def _cases(n, labelled=True):
    return [Case(f"case_{i:03d}", Path(f"/data/img_{i}.nii.gz"), Path(f"/data/lab_{i}.nii.gz") if labelled else None)
            for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 80), frac=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
def test_split_is_disjoint_and_complete(n, frac, seed):
    cases = _cases(n)
    train, test = split_cases(cases, test_fraction=frac, seed=seed)
    train_ids, test_ids = {c.case_id for c in train}, {c.case_id for c in test}
    assert train_ids.isdisjoint(test_ids)
    assert train_ids | test_ids == {c.case_id for c in cases}
    assert {c.image for c in train}.isdisjoint({c.image for c in test})
    assert 1 <= len(test) <= n - 1 and len(test) == min(n - 1, max(1, round(frac * n)))


def test_split_depends_only_on_ids_and_seed():
    cases = _cases(30)
    train, test = split_cases(cases, n_test=6, seed=4)
    shuffled = [cases[i] for i in np.random.default_rng(0).permutation(30)]
    assert split_cases(shuffled, n_test=6, seed=4) == (train, test)
    others = {tuple(c.case_id for c in split_cases(cases, n_test=6, seed=s)[1]) for s in range(5)}
    assert len(others) > 1  # the seed matters
    assert [c.case_id for c in test] == sorted(c.case_id for c in test)


def test_labelled_subsets_are_seeded_and_nested():
    train, _ = split_cases(_cases(90), n_test=20, seed=0)
    for seed in (0, 1):
        small, large = (labelled_subset(train, n, seed=seed) for n in PAPER_LABELLED_SIZES)
        assert len(small) == 10 and len(large) == 60
        assert {c.case_id for c in small} <= {c.case_id for c in large}
        assert labelled_subset(train, 10, seed=seed) == small
    assert labelled_subset(train, 10, seed=0) != labelled_subset(train, 10, seed=1)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: split_cases(_cases(5)), ValueError, "exactly one"),
        (lambda: split_cases(_cases(5), n_test=2, test_fraction=0.5), ValueError, "exactly one"),
        (lambda: split_cases(_cases(5), n_test=5), ValueError, "n_test"),
        (lambda: split_cases(_cases(5), n_test=0), ValueError, "n_test"),
        (lambda: split_cases(_cases(5), test_fraction=1.0), ValueError, "test_fraction"),
        (lambda: split_cases(_cases(1), n_test=1), ValueError, "at least 2"),
        (lambda: split_cases(_cases(5), n_test=1, seed=1.5), TypeError, "seed"),
        (lambda: split_cases(_cases(3) + _cases(3)[:1], n_test=1), ValueError, "unique case_id"),
        (lambda: split_cases(_cases(3) + [Case("other", Path("/data/img_0.nii.gz"))], n_test=1), ValueError, "one image under two"),
        (lambda: split_cases(_cases(5), n_test=1, seed=-1), ValueError, "seed must be >= 0"),
        (lambda: labelled_subset(_cases(5), 2, seed=-3), ValueError, "seed must be >= 0"),
        (lambda: split_cases([Case("a", Path("img.nii.gz")), Case("b", Path.cwd() / "img.nii.gz"),
                              Case("c", Path("other.nii.gz"))], n_test=1), ValueError, "one image under two"),
        (lambda: labelled_subset(_cases(5), 6), ValueError, r"n must be an int in \[1, 5\]"),
        (lambda: labelled_subset(_cases(5, labelled=False), 2), ValueError, "labels"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()

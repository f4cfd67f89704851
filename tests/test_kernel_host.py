"""The launchers' host-side integer helpers equal Triton's own (which cost ~2 µs a call)."""
import triton

from lrc_fast.kernels._host import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_match_triton():
    for n in list(range(0, 2100)) + [2**20 - 1, 2**20, 2**20 + 1, 2**31 - 1]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 1000, 1024):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)

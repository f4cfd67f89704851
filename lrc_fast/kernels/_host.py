"""Host-side integer helpers for the Triton launchers.

``triton.cdiv`` and ``triton.next_power_of_2`` are ``constexpr_function`` objects in recent Triton:
a call from Python costs about 2 µs (Triton 3.9 on this project's CPU machine) against 0.03 µs
for the plain expression, and a fused loss step makes about a dozen of them on the host.
"""


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints, ``b > 0``."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` for ``n >= 1``; 0 for ``n = 0``, as Triton's."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()

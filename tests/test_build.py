"""How the compiled extension was linked (no GPU needed)."""
import ctypes
import sys

import pytest

import lrc_fast._ext

# std::ostream::_M_insert<long>: what every integer in an error message goes through.
_OSTREAM_INSERT_LONG = "_ZNSo9_M_insertIlEERSoT_"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc dynamic-linking check")
def test_extension_uses_the_process_cxx_runtime():
    """The module must not carry its own copy of libstdc++: on the lent GPU image the linker once
    took the static archive, and the first error message with a number in it crashed the process
    (setup.py names the shared libstdc++ on the link line since)."""
    ext = lrc_fast._ext.require_extension()
    # dlsym on the module's handle looks in the module first, then in what it links to.
    ours = ctypes.cast(getattr(ctypes.CDLL(ext.__file__), _OSTREAM_INSERT_LONG), ctypes.c_void_p).value
    shared = ctypes.cast(getattr(ctypes.CDLL("libstdc++.so.6"), _OSTREAM_INSERT_LONG), ctypes.c_void_p).value
    assert ours == shared, f"{ext.__file__} defines its own {_OSTREAM_INSERT_LONG}: linked with a static libstdc++"


def test_error_message_with_integers_reaches_python():
    """A check failing inside the module, with integers in its message, raises RuntimeError."""
    import torch

    ext = lrc_fast._ext.require_extension()
    x = torch.rand(1, 4, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="got cluster=9, threads=1024"):
        ext.felzenszwalb_simt(x, torch.empty(0, dtype=torch.float64), 1 / 255, 20, 9, 1024, 2048, True, 0)

"""The `lrc-fast` command: the demo on a small phantom slice, `info`, and its argument checks."""
import pytest

import lrc_fast
from lrc_fast.cli import main


def test_demo_writes_its_overlays(tmp_path, capsys):
    assert main(["demo", "--size", "64", "--out", str(tmp_path), "--device", "cpu"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ct_small_superpixels.png", "phantom_positive_view.png", "phantom_superpixels.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in names)
    out = capsys.readouterr().out
    assert "ct_small (pydicom, real CT): 128x128, K = " in out
    assert "region contrast loss (N=50, tau=0.1)" in out


def test_info_prints_the_backends(capsys):
    assert main(["info"]) == 0
    assert capsys.readouterr().out.strip() == str(lrc_fast.backends())


@pytest.mark.parametrize("args, match", [
    (["demo", "--size", "32"], "--size must be at least 64"),
    (["demo", "--seed", "-1"], "--seed must be in [0, 2**64), got -1"),
    (["demo", "--seed", str(2 ** 64)], "--seed must be in [0, 2**64)"),
    (["demo", "--out", __file__], "--out must be a folder"),
    (["demo", "--out", __file__ + "/sub"], "cannot create the folder"),  # a folder under a file
    (["demo", "--device", "foo"], "--device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got 'foo'"),
    (["demo", "--device", "meta"], "--device must be 'cpu' or 'cuda'"),
    (["demo", "--device", "mps"], "--device must be 'cpu' or 'cuda'"),
    (["bogus"], "invalid choice"),
])
def test_bad_arguments_are_usage_errors(args, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err
    if args[0] == "demo":  # the usage line is the subcommand's
        assert err.startswith("usage: lrc-fast demo")


def test_cuda_device_without_cuda_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["demo", "--device", "cuda"])
    assert "this torch has no CUDA device" in capsys.readouterr().err


def test_cuda_device_index_beyond_the_machine_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(SystemExit):
        main(["demo", "--device", "cuda:3"])
    assert "--device cuda:3: this machine has 1 CUDA device(s)" in capsys.readouterr().err

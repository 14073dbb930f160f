"""Output folders lose nothing (issue 36, items 1 and 2 of its report): ``--overwrite`` replaces
only a folder that diffinv wrote, never the working folder, a folder holding it, the command's
input or a folder with a user's files; a result is swapped in only when complete, so a crash or a
refusal leaves the old folder as it was; a second writer of the same output is refused.

Every case runs in a sandbox holding a user's file and checks that nothing in it changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffinv.cli import main
from diffinv.errors import DiffinvError
from diffinv.fileio import MARKER, atomic_folder, release_output_folder
from diffinv.physics import measure, save_measurement


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (folders: their mode), hidden ones too."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
                    else oct(p.stat().st_mode & 0o777))
    return out


def refused(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """The working folder of a user: a measurement, an image and a file of theirs."""
    from diffinv.data.images import save_image

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("a user's file\n")
    x = torch.linspace(-0.8, 0.8, 32 * 32).reshape(1, 1, 32, 32)
    save_image(x[0], work / "img.png")
    save_measurement(measure(x, "identity", "gaussian:0.05", 0, domain="fashion32"),
                     work / "m")
    monkeypatch.chdir(work)
    yield work
    for p in list(work.rglob("*")):  # read-only folders made by a test, so tmp_path cleans up
        if p.is_dir():
            p.chmod(0o755)


# ---------------------------------------------------------------- never the working folder
@pytest.mark.parametrize("argv", [
    ["solve", "m", "--solver", "ddrm", "-o", ".", "--overwrite"],
    ["solve", "m", "--solver", "ddrm", "-o", "{cwd}", "--overwrite"],
    ["measure", "img.png", "--op", "identity", "-o", ".", "--overwrite"],
    ["measure", "img.png", "--op", "identity", "-o", "{cwd}", "--overwrite"],
    ["measure", "img.png", "--op", "identity", "-o", "..", "--overwrite"],
])
def test_overwrite_never_replaces_the_working_folder_or_its_parents(sandbox, capsys, argv):
    before = snapshot(sandbox.parent)
    err = refused([a.format(cwd=os.getcwd()) for a in argv], capsys)
    assert "working folder" in err
    assert snapshot(sandbox.parent) == before


def test_a_folder_holding_the_working_folder_is_refused(sandbox, capsys, monkeypatch):
    deeper = sandbox / "a" / "b"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)
    before = snapshot(sandbox)
    err = refused(["measure", "../../img.png", "--op", "identity", "-o", str(sandbox / "a"),
                   "--overwrite"], capsys)
    assert "holds the working folder" in err
    assert snapshot(sandbox) == before


# ------------------------------------------------------------------------- never the input
def test_solve_never_writes_over_its_own_input(sandbox, capsys):
    before = snapshot(sandbox)
    err = refused(["solve", "m", "--solver", "ddrm", "-o", "m", "--overwrite"], capsys)
    assert "input" in err
    assert snapshot(sandbox) == before


def test_measure_never_replaces_the_folder_of_its_input_images(sandbox, capsys):
    pictures = sandbox / "pictures"
    pictures.mkdir()
    (sandbox / "img.png").rename(pictures / "img.png")
    before = snapshot(sandbox)
    err = refused(["measure", "pictures/img.png", "--op", "identity", "-o", "pictures",
                   "--overwrite"], capsys)
    assert "input" in err
    assert snapshot(sandbox) == before


# -------------------------------------------------------- only folders that diffinv wrote
def test_a_folder_with_a_users_file_is_never_replaced(sandbox, capsys):
    save_measurement(measure(torch.zeros(1, 1, 8, 8), "identity", "none", 0), sandbox / "out")
    (sandbox / "out" / "mine.txt").write_text("keep me\n")
    before = snapshot(sandbox)
    err = refused(["measure", "img.png", "--op", "identity", "-o", "out", "--overwrite"], capsys)
    assert "did not write" in err and "mine.txt" in err
    assert snapshot(sandbox) == before


def test_a_folder_without_the_manifest_is_never_replaced(sandbox, capsys):
    (sandbox / "results").mkdir()
    (sandbox / "results" / "spec.json").write_text("{}\n")
    before = snapshot(sandbox)
    err = refused(["measure", "img.png", "--op", "identity", "-o", "results", "--overwrite"],
                  capsys)
    assert MARKER in err
    assert snapshot(sandbox) == before


def test_overwrite_replaces_a_folder_diffinv_wrote(sandbox, capsys):
    assert main(["measure", "img.png", "--op", "identity", "--noise", "none", "-o", "out"]) == 0
    first = snapshot(sandbox / "out")
    assert main(["measure", "img.png", "--op", "identity", "--noise", "gaussian:0.1",
                 "--seed", "3", "-o", "out", "--overwrite"]) == 0
    second = snapshot(sandbox / "out")
    assert set(first) == set(second) and first != second
    assert {p.name for p in sandbox.iterdir()} == {"notes.txt", "img.png", "m", "out"}


def test_solve_overwrites_its_own_earlier_result(sandbox, capsys):
    argv = ["solve", "m", "--solver", "ddrm", "-p", "steps=2", "--no-progress", "-o", "res"]
    assert main(argv) == 0
    assert main(argv[:-2] + ["--seed", "1", "-o", "res", "--overwrite"]) == 0
    assert (sandbox / "res" / MARKER).is_file()
    assert (sandbox / "notes.txt").read_text() == "a user's file\n"


def test_an_empty_read_only_folder_is_refused_and_keeps_its_mode(sandbox, capsys):
    ro = sandbox / "ro2"
    ro.mkdir()
    ro.chmod(0o500)  # read-only to its owner, even where the owner is root
    before = snapshot(sandbox)
    err = refused(["solve", "m", "--solver", "ddrm", "-o", "ro2"], capsys)
    assert "read-only" in err
    assert snapshot(sandbox) == before


def test_a_symbolic_link_is_refused(sandbox, capsys):
    (sandbox / "real").mkdir()
    (sandbox / "link").symlink_to(sandbox / "real")
    before = snapshot(sandbox)
    err = refused(["measure", "img.png", "--op", "identity", "-o", "link", "--overwrite"], capsys)
    assert "symbolic link" in err
    assert snapshot(sandbox) == before


# -------------------------------------------------- a crash leaves the old folder in place
def test_a_failure_while_writing_leaves_the_old_folder(sandbox):
    save_measurement(measure(torch.zeros(1, 1, 8, 8), "identity", "none", 0), sandbox / "out")
    before = snapshot(sandbox)
    with (pytest.raises(RuntimeError, match="disk full"),
          atomic_folder(sandbox / "out", overwrite=True) as tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert snapshot(sandbox) == before


def test_a_failure_during_the_swap_puts_the_old_folder_back(sandbox, monkeypatch):
    save_measurement(measure(torch.zeros(1, 1, 8, 8), "identity", "none", 0), sandbox / "out")
    before = snapshot(sandbox)
    real_rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise OSError(5, "I/O error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError), atomic_folder(sandbox / "out", overwrite=True) as tmp:
        (tmp / "new.bin").write_bytes(b"x")
    monkeypatch.undo()
    assert len(calls) == 3  # aside, (failed) in, back
    assert snapshot(sandbox) == before


def test_a_folder_that_gains_a_users_file_during_the_run_is_kept(sandbox):
    save_measurement(measure(torch.zeros(1, 1, 8, 8), "identity", "none", 0), sandbox / "out")
    with (pytest.raises(DiffinvError, match="did not write"),
          atomic_folder(sandbox / "out", overwrite=True) as tmp):
        (tmp / "new.bin").write_bytes(b"x")
        (sandbox / "out" / "late.txt").write_text("written while diffinv worked\n")
    assert (sandbox / "out" / "late.txt").is_file()
    assert not any(p.name.startswith(".out") for p in sandbox.iterdir())


# ------------------------------------------------------------------ one writer per output
_CLAIM = """
import sys
from diffinv.checks import check_output_folder
from diffinv.errors import DiffinvError
try:
    check_output_folder(sys.argv[1])
except DiffinvError as e:
    print(e)
    sys.exit(1)
"""


def test_a_second_process_writing_the_same_output_is_refused(sandbox):
    from diffinv.checks import check_output_folder

    check_output_folder(sandbox / "new")  # this process now writes "new"
    try:
        other = subprocess.run([sys.executable, "-c", _CLAIM, str(sandbox / "new")],
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 1, other.stderr
        assert f"pid {os.getpid()}" in other.stdout and "is writing" in other.stdout
    finally:
        release_output_folder(sandbox / "new")
    free = subprocess.run([sys.executable, "-c", _CLAIM, str(sandbox / "new")],
                          capture_output=True, text=True, timeout=120)
    assert free.returncode == 0, free.stdout + free.stderr
    assert not (sandbox / "new").exists()


# ------------------------------------------------------------------- the demo, too
def test_demo_writes_a_whole_folder_and_never_a_users_files(sandbox, capsys):
    before = snapshot(sandbox)
    err = refused(["demo", "--solver", "ddrm", "-n", "1", "-o", ".", "--overwrite"], capsys)
    assert "working folder" in err
    assert snapshot(sandbox) == before
    (sandbox / "mine").mkdir()
    (sandbox / "mine" / "metrics.json").write_text("a user's metrics\n")
    err = refused(["demo", "--solver", "ddrm", "-n", "1", "-o", "mine"], capsys)
    assert "not empty" in err
    assert (sandbox / "mine" / "metrics.json").read_text() == "a user's metrics\n"
    assert main(["demo", "--solver", "ddrm", "-n", "1", "-o", "d"]) == 0
    assert main(["demo", "--solver", "ddrm", "-n", "1", "-o", "d", "--overwrite"]) == 0
    assert {p.name for p in (sandbox / "d").iterdir()} == {MARKER, "demo.png", "metrics.json"}


def test_measure_announces_a_whole_split(sandbox, capsys, monkeypatch):
    import diffinv.data

    def small_split(spec):
        return torch.zeros(2, 1, 8, 8), torch.zeros(2), [0, 1]

    monkeypatch.setattr(diffinv.data, "get_images", small_split)
    assert main(["measure", "--dataset", "fashion32:test", "--op", "identity", "-o", "w"]) == 0
    assert "every image of the split" in capsys.readouterr().err
    assert main(["measure", "--dataset", "fashion32:test:0-1", "--op", "identity", "-o", "v"]) == 0
    assert "every image" not in capsys.readouterr().err


# ------------------------------------------------------------------- single output files
def test_sample_never_replaces_an_existing_file_unasked(sandbox, capsys):
    """``sample -o FILE`` / ``--tensor FILE``: an existing file (a user's, or an earlier grid) is
    refused, byte for byte unchanged, unless ``--overwrite``."""
    (sandbox / "grid.png").write_bytes(b"a user's picture")
    (sandbox / "t.safetensors").write_bytes(b"a user's tensors")
    before = snapshot(sandbox)
    small = ["sample", "-n", "1", "--steps", "2", "--batch", "1"]
    err = refused(small + ["-o", "grid.png"], capsys)
    assert "grid.png exists" in err and "--overwrite" in err
    err = refused(small + ["-o", "new.png", "--tensor", "t.safetensors"], capsys)
    assert "t.safetensors exists" in err
    assert snapshot(sandbox) == before
    assert main(small + ["-o", "grid.png", "--overwrite"]) == 0
    assert (sandbox / "grid.png").read_bytes().startswith(b"\x89PNG")


def test_trainers_never_replace_an_existing_export_unasked(sandbox, capsys):
    """``--export``: existing export files are refused before training unless ``--overwrite``."""
    (sandbox / "exp").mkdir()
    (sandbox / "exp" / "ae-fashion32.json").write_text("a user's card\n")
    before = snapshot(sandbox)
    err = refused(["train-autoencoder", "--dataset", "fashion32", "--out", "run", "--steps", "1",
                   "--export", "exp"], capsys)
    assert "ae-fashion32.json exists" in err and "--overwrite" in err
    assert snapshot(sandbox) == before
    (sandbox / "enc.json").write_text("a user's card\n")
    err = refused(["train-likelihood", "--prior", "fashion32", "--out", "run", "--steps", "1",
                   "--export", "enc"], capsys)
    assert "enc.json exists" in err
    assert snapshot(sandbox) == before | {"enc.json": snapshot(sandbox)["enc.json"]}


@pytest.mark.parametrize("existing", ["fashion32-latent.json",
                                      "fashion32-latent-autoencoder.safetensors"])
def test_a_latent_prior_export_checks_the_files_it_writes(sandbox, capsys, existing):
    """``train-prior --latent AE --export DIR`` writes ``DATASET-latent.*`` and copies the
    autoencoder as ``DATASET-latent-autoencoder.*``: each existing one is refused up front."""
    (sandbox / "exp").mkdir()
    (sandbox / "exp" / existing).write_text("a user's file\n")
    before = snapshot(sandbox)
    err = refused(["train-prior", "--dataset", "fashion32", "--latent", "ae.safetensors",
                   "--out", "run", "--steps", "1", "--export", "exp"], capsys)
    assert f"{existing} exists" in err
    assert snapshot(sandbox) == before

"""Output files (difflab.outputs): atomic, never over an earlier file, a link or an input; and a
`difflab generate -n 64` killed with SIGKILL again and again leaves only complete PNGs."""

import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from difflab.outputs import (append_text, check_output_file, check_output_folder, clean_stale_temporary, free_names,
                             write_bytes, write_file)
from difflab.pipelines import Result, read_recipe

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def hidden_temporary(folder):
    return [p for p in os.listdir(folder) if ".tmp-" in p]


def test_a_taken_name_gets_the_next_counter_prefix_and_the_old_file_stays(tmp_path):
    first = write_bytes(tmp_path / "image-0-000.png", b"first")
    second = write_bytes(tmp_path / "image-0-000.png", b"second")
    third = write_bytes(tmp_path / "image-0-000.png", b"third")
    assert [first.name, second.name, third.name] == ["image-0-000.png", "00001-image-0-000.png",
                                                    "00002-image-0-000.png"]
    assert [p.read_bytes() for p in (first, second, third)] == [b"first", b"second", b"third"]
    assert hidden_temporary(tmp_path) == []


def test_a_batch_shares_one_counter_prefix(tmp_path):
    (tmp_path / "image-1-001.png").write_bytes(b"old")
    (tmp_path / "00007-other.png").write_bytes(b"old")
    names = ["image-0-000.png", "image-1-001.png"]
    assert [p.name for p in free_names(tmp_path, names)] == ["00008-image-0-000.png", "00008-image-1-001.png"]
    assert [p.name for p in free_names(tmp_path / "new", names)] == names


def test_overwrite_replaces_a_regular_file(tmp_path):
    write_bytes(tmp_path / "report.json", b"old")
    assert write_bytes(tmp_path / "report.json", b"new", overwrite=True) == tmp_path / "report.json"
    assert (tmp_path / "report.json").read_bytes() == b"new" and len(os.listdir(tmp_path)) == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_link_at_the_final_name_is_never_followed(tmp_path, overwrite):
    outside = tmp_path / "elsewhere.txt"
    outside.write_bytes(b"precious")
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "image-0-000.png").symlink_to(outside)
    (out / "dangling.png").symlink_to(tmp_path / "missing")
    written = write_bytes(out / "image-0-000.png", b"png", overwrite=overwrite)
    dangling = write_bytes(out / "dangling.png", b"png", overwrite=overwrite)
    assert outside.read_bytes() == b"precious" and not (tmp_path / "missing").exists()
    assert os.readlink(out / "image-0-000.png") == str(outside)
    assert written.name == "00001-image-0-000.png" and written.read_bytes() == b"png"
    assert dangling.name.endswith("-dangling.png") and not dangling.is_symlink()


def test_an_input_file_is_never_overwritten(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(b"input")
    (tmp_path / "hard.png").hardlink_to(source)
    for name in ("in.png", "hard.png"):
        written = write_bytes(tmp_path / name, b"output", overwrite=True, inputs=[str(tmp_path / "." / "in.png")])
        assert written.name != name and written.read_bytes() == b"output"
    assert source.read_bytes() == b"input" and (tmp_path / "hard.png").read_bytes() == b"input"


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(tmp_path / "image.png", broken)
    assert os.listdir(tmp_path) == []


def test_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".image-0-000.png.tmp-{dead.pid}-abcdef"
    live = tmp_path / f".image-1-001.png.tmp-{os.getppid()}-abcdef"   # a writer still running
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    write_bytes(tmp_path / "x.png", b"png")
    assert not stale.exists() and live.exists()
    clean_stale_temporary(tmp_path / "missing")  # a missing folder is not an error


def test_logs_are_appended_but_never_through_a_link(tmp_path):
    append_text(tmp_path / "log.csv", "a\n")
    append_text(tmp_path / "log.csv", "b\n")
    assert (tmp_path / "log.csv").read_text() == "a\nb\n"
    (tmp_path / "other.csv").write_text("keep")
    (tmp_path / "link.csv").symlink_to(tmp_path / "other.csv")
    with pytest.raises(OSError):
        append_text(tmp_path / "link.csv", "x\n")
    assert (tmp_path / "other.csv").read_text() == "keep"


def test_output_folders_are_checked_without_creating_anything(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="is a file"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be created: .*file is a file"):
        check_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path)
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ValueError, match="not writable"):
            check_output_folder(locked)


def test_result_save_writes_pngs_with_recipes_and_never_overwrites(tmp_path):
    images = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    settings = {"steps": 4, "sampler": "euler", "guidance_scale": 1.0, "spacing": None}
    result = Result(images, [{"prompt": "a red circle", "seed": 3, **settings},
                             {"prompt": "a blue square", "seed": 4, **settings}])
    first = result.save(tmp_path)
    again = result.save(tmp_path)
    assert [p.name for p in first] == ["image-3-000.png", "image-4-001.png"]
    assert [p.name for p in again] == ["00001-image-3-000.png", "00001-image-4-001.png"]
    assert read_recipe(again[1])["prompt"] == "a blue square"
    assert Image.open(first[0]).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match="is a file"):
        result.save(first[0])


# ----- SIGKILL while `difflab generate -n 64` writes ------------------------------------------------------
@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """An untrained class-conditional UNet: the files written are what matters, not their pixels."""
    from difflab.models import UNet
    from difflab.schedules import NoiseSchedule

    folder = tmp_path_factory.mktemp("kill") / "tiny"
    model = UNet(3, 3, channels=(8, 16), norm_groups=4, head_dim=8, num_classes=1, attention_levels=(),
                 mid_attention=False)
    metadata = {"diffusion": {"schedule": NoiseSchedule.linear().to_config(), "prediction_type": "epsilon"},
                "conditioning": {"encoder": {"type": "class_labels", "class_names": ["a red circle"]}, "null": ""},
                "data": {"resolution": 32, "channels": 3}}
    model.save_pretrained(folder, metadata=metadata)
    return folder


def visible(folder):
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def kill_when(folder, seen, condition):
    """Start `generate -n 64`, SIGKILL it once ``condition(new visible files, temporaries)`` holds."""
    command = [sys.executable, "-m", "difflab", "generate", "a red circle", "-n", "64", "--steps", "4", "--seed", "0",
               "--model", str(seen["package"]), "--out", str(folder)]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = len(visible(folder)) if folder.exists() else 0
    for _ in range(200_000):  # bounded: about 2-4 minutes of polling at most
        if run.poll() is not None:
            break
        if folder.exists() and condition(len(visible(folder)) - before, hidden_temporary(folder)):
            break
        time.sleep(0.0005)
    run.send_signal(signal.SIGKILL)
    run.wait()
    return len(visible(folder)) - before


def assert_only_complete_pngs(folder):
    for path in visible(folder):
        assert path.suffix == ".png", f"unexpected file {path.name}"
        with Image.open(path) as image:
            image.verify()                                     # the whole file, CRCs included
        assert read_recipe(path)["prompt"] == "a red circle"
    for name in hidden_temporary(folder):
        assert name.startswith(".") and not name.endswith(".png"), name


def test_sigkill_during_generate_leaves_only_complete_pngs(package, tmp_path):
    folder = tmp_path / "out"
    seen = {"package": package}
    conditions = [lambda new, tmp: bool(tmp),                  # while the first file is being written
                  lambda new, tmp: new >= 1, lambda new, tmp: new >= 9, lambda new, tmp: new >= 40,
                  lambda new, tmp: bool(tmp) and new >= 20]
    written = []
    for condition in conditions:
        written.append(kill_when(folder, seen, condition))
        assert_only_complete_pngs(folder)
    finished = subprocess.run([sys.executable, "-m", "difflab", "generate", "a red circle", "-n", "64", "--steps",
                               "4", "--seed", "0", "--model", str(package), "--out", str(folder)],
                              env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_only_complete_pngs(folder)
    assert hidden_temporary(folder) == []          # the finished run removed the killed runs' temporaries
    print("new files per killed run:", written)
    assert len(visible(folder)) == sum(written) + 64, written

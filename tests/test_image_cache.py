"""The prepared image file: made once, reused, never served stale or half-written."""

import collections
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from diffusion_keras import image_cache, image_files
from diffusion_keras.data import load_image_folder, open_images
from diffusion_keras.errors import UsageError


def cache_files(folder):
    return sorted(name for name in os.listdir(folder)) if os.path.isdir(folder) else []


def test_prepares_once_and_matches_the_in_memory_decode(tiny_folder, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    images = open_images(16, data_dir=str(tiny_folder), cache_dir=cache)
    assert "preparing 48 images" in capsys.readouterr().err
    again = open_images(16, data_dir=str(tiny_folder), cache_dir=cache)
    assert "preparing" not in capsys.readouterr().err  # reused
    assert again.path == images.path and len(cache_files(cache)) == 2  # the images and their JSON
    np.testing.assert_array_equal(images[np.arange(48)], load_image_folder(str(tiny_folder), 16))
    np.testing.assert_array_equal(images[5], images[np.array([5])][0])
    assert images.class_names == ["a", "b"]
    assert sorted(collections.Counter(images.labels.tolist())) == [0, 1]


def test_parallel_decoding_gives_the_same_file(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(image_files, "PARALLEL_FROM", 1)
    serial = open_images(8, data_dir=str(tiny_folder), cache_dir=str(tmp_path / "a"), workers=1)
    parallel = open_images(8, data_dir=str(tiny_folder), cache_dir=str(tmp_path / "b"), workers=2)
    np.testing.assert_array_equal(serial[np.arange(48)], parallel[np.arange(48)])


def test_changed_folder_or_settings_prepare_a_new_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        Image.new("RGB", (12, 12), (index * 60, 0, 0)).save(folder / f"{index}.png")
    cache = str(tmp_path / "cache")
    first = open_images(8, data_dir=str(folder), cache_dir=cache)
    Image.new("RGB", (12, 12), (0, 0, 255)).save(folder / "0.png")  # same name, new content
    changed = open_images(8, data_dir=str(folder), cache_dir=cache)
    assert changed.path != first.path and changed[0][0, 0, 2] == 255
    assert open_images(4, data_dir=str(folder), cache_dir=cache).shape == (4, 4, 4, 3)
    assert open_images(8, data_dir=str(folder), limit=2, cache_dir=cache).shape[0] == 2


def test_truncated_or_foreign_file_is_rebuilt_with_a_note(tiny_folder, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    images = open_images(8, data_dir=str(tiny_folder), cache_dir=cache)
    expected = images[np.arange(48)]
    with open(images.path, "r+b") as file:
        file.truncate(100)
    rebuilt = open_images(8, data_dir=str(tiny_folder), cache_dir=cache)
    assert "are truncated; preparing them again" in capsys.readouterr().err
    np.testing.assert_array_equal(rebuilt[np.arange(48)], expected)
    description = images.path[:-len(".u8")] + ".json"
    text = open(description).read()
    with open(description, "w") as file:
        file.write(text.replace('"key": "', '"key": "0'))
    open_images(8, data_dir=str(tiny_folder), cache_dir=cache)
    assert "from other settings; preparing them again" in capsys.readouterr().err


def test_interrupted_prepare_leaves_nothing_a_later_run_trusts(tiny_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    decode = image_files.decode

    def interrupted(source, image_size, channels):
        if interrupted.calls == 20:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return decode(source, image_size, channels)

    interrupted.calls = 0
    monkeypatch.setattr(image_files, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_images(8, data_dir=str(tiny_folder), cache_dir=str(cache))
    assert cache_files(cache) == []  # no temporary file, no description
    monkeypatch.setattr(image_files, "decode", decode)
    assert len(open_images(8, data_dir=str(tiny_folder), cache_dir=str(cache))) == 48


def test_no_disk_space_is_one_line_before_any_work(tiny_folder, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: usage(1, 1, 1000))
    with pytest.raises(UsageError, match=r"needs 9.0 KiB .* but only 1000 bytes is free; free "
                                         "some space or pass --cache-dir"):
        open_images(8, data_dir=str(tiny_folder), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_a_full_disk_while_writing_leaves_nothing_behind(tiny_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_files, "decode", lambda *args: full())
    with pytest.raises(UsageError, match="No space left on device.*--cache-dir"):
        open_images(8, data_dir=str(tiny_folder), cache_dir=str(cache))
    assert cache_files(cache) == []


def test_grayscale_folder_is_prepared_with_one_channel(tmp_path):
    for index in range(3):
        Image.new("L", (10, 10), 40 * index).save(tmp_path / f"{index}.png")
    images = open_images(8, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert images.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(images[np.arange(3)][:, 0, 0, 0], [0, 40, 80])
    assert (images.labels == -1).all() and images.class_names == []


def test_a_replaced_file_with_its_size_and_time_restored_is_prepared_again(tmp_path):
    """As `cp -p` or `rsync -t` leave it: the key holds each file's content hash, not its time."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (12, 12), (200, 0, 0)).save(folder / "0.bmp")
    cache = str(tmp_path / "cache")
    first = open_images(8, data_dir=str(folder), cache_dir=cache)
    status = os.stat(folder / "0.bmp")
    Image.new("RGB", (12, 12), (0, 0, 200)).save(folder / "0.bmp")  # BMP: the same size
    os.utime(folder / "0.bmp", ns=(status.st_atime_ns, status.st_mtime_ns))
    assert os.stat(folder / "0.bmp").st_size == status.st_size
    replaced = open_images(8, data_dir=str(folder), cache_dir=cache)
    assert replaced.path != first.path and replaced[0][0, 0, 2] == 200
    os.utime(folder / "0.bmp")  # touched, content unchanged: the prepared file still serves
    assert open_images(8, data_dir=str(folder), cache_dir=cache).path == replaced.path


def test_a_resumed_run_asking_for_its_channels_reuses_the_first_runs_file(tiny_folder, tmp_path,
                                                                          capsys):
    cache = str(tmp_path / "cache")
    first = open_images(8, data_dir=str(tiny_folder), cache_dir=cache)  # channels left to the data
    capsys.readouterr()
    resumed = open_images(8, data_dir=str(tiny_folder), cache_dir=cache, channels=3)
    assert resumed.path == first.path and "preparing" not in capsys.readouterr().err
    assert len(cache_files(cache)) == 2
    gray = open_images(8, data_dir=str(tiny_folder), cache_dir=cache, channels=1)
    assert gray.shape[-1] == 1 and gray.path != first.path


WORKERS_OF_A_KILLED_PREPARE = """
import os, sys, time
from diffusion_keras import image_files
from diffusion_keras.data import open_images

decode = image_files.decode
def slow(*args):
    time.sleep(0.05)
    return decode(*args)
image_files.decode = slow
open_images(8, data_dir=sys.argv[1], cache_dir=sys.argv[2], workers=2)
"""


@pytest.mark.slow
def test_decoding_workers_end_when_their_parent_is_killed(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(image_files.PARALLEL_FROM + 44):
        Image.new("RGB", (12, 12), (index % 256, 0, 0)).save(folder / f"{index}.png")
    parent = subprocess.Popen([sys.executable, "-c", WORKERS_OF_A_KILLED_PREPARE, str(folder),
                               str(tmp_path / "cache")], stderr=subprocess.PIPE, text=True)

    def workers():
        result = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True)
        return [int(pid) for pid in result.stdout.split()]

    deadline = time.monotonic() + 120
    while len(workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    children = workers()
    assert len(children) >= 2, "the prepare runs in worker processes"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}")
             and open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
    assert alive == [], "workers died with their parent"

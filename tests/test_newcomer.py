"""What a newcomer meets first: the README's quick start ends in pictures of the shapes, and the
inputs that used to be accepted without a word (or failed with a traceback) are one line each."""

import os
import re
import shlex
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from diffusion_keras import DiffusionModel, demo_images, plotting
from diffusion_keras.cli import generate, train
from diffusion_keras.config import ModelConfig
from diffusion_keras.data import load_image_folder
from diffusion_keras.errors import UsageError
from tests.conftest import TINY
from tests.test_cli import assert_one_line_error, exit_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start():
    """The README's offline quick start: the code block that makes the demo pictures."""
    with open(os.path.join(ROOT, "README.md")) as file:
        blocks = re.findall(r"```\n(.*?)```", file.read(), re.S)
    (block,) = [block for block in blocks if "demo_images /tmp/shapes" in block
                and "generate.py" in block]
    return [shlex.split(line) for line in block.strip().splitlines()]


def grid_cells(path, count, size):
    """The images of a `plotting.save_image_grid` PNG (square grid, 1-pixel padding), as uint8."""
    picture = np.asarray(Image.open(path).convert("RGB"))
    columns = int(np.ceil(np.sqrt(count)))
    factor = picture.shape[1] // (columns * (size + 1) + 1)
    picture = picture[::factor, ::factor]
    return np.stack([picture[1 + row * (size + 1):1 + row * (size + 1) + size,
                             1 + column * (size + 1):1 + column * (size + 1) + size]
                     for row, column in (divmod(index, columns) for index in range(count))])


def test_shape_likeness_tells_the_demo_pictures_from_noise(tmp_path):
    images = load_image_folder(demo_images.write_shapes(str(tmp_path), count=64), 16)
    rng = np.random.default_rng(0)
    assert demo_images.shape_likeness(images) > 0.9
    assert demo_images.shape_likeness(images[:, :, ::-1]) > 0.9  # flipped in training
    noise = rng.integers(0, 256, images.shape)
    assert demo_images.shape_likeness(noise) == 0
    assert demo_images.shape_likeness((noise + images) // 2) == 0
    assert demo_images.shape_likeness(np.full_like(images, 128)) == 0


@pytest.mark.slow
def test_the_readme_quick_start_ends_in_pictures_of_the_shapes(tmp_path):
    """Run as written (in a fresh folder; /tmp/shapes there): most generated images are a
    coloured square on the grey ramp, where an untrained model's are all noise."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    for words in quick_start():
        words = [str(tmp_path / "shapes") if word == "/tmp/shapes" else word for word in words]
        words[0] = sys.executable if words[0].endswith("python") else words[0]
        words = [os.path.join(ROOT, word) if word.endswith(".py") else word for word in words]
        result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    (run,) = os.listdir(tmp_path / "runs")
    generated = tmp_path / "runs" / run / "generated"
    (grid,) = [name for name in os.listdir(generated) if name.startswith("samples_")
               and name.endswith(".png")]
    images = grid_cells(generated / grid, 36, 16)
    assert demo_images.shape_likeness(images) >= 0.5
    assert [name for name in os.listdir(generated) if name.startswith("interpolation_")]
    untrained = grid_cells(tmp_path / "runs" / run / "plots" / "samples_untrained.png", 16, 16)
    assert demo_images.shape_likeness(untrained) == 0


MISSING_JAX = """
import sys

class NoJax:  # as if JAX were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoJax())
from diffusion_keras.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_missing_backend_is_one_line_naming_what_to_install():
    result = subprocess.run([sys.executable, "-c", MISSING_JAX, "--epochs", "1"], cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: KERAS_BACKEND=jax needs jax, which is not installed for {sys.executable}; install "
        "it with pip install -e '.[jax]' (in the project's .venv), or choose another KERAS_BACKEND"]


@pytest.mark.parametrize("main, argv, message", [
    (train.main, ["--attention-resolutions", "3"],
     "attention resolutions [3] are not feature-map sides of this U-Net; choose among "
     "[32, 16, 8, 4]"),
    (train.main, ["--timesteps", "100"], "--timesteps sets the DDPM formulation's integer steps"),
    (train.main, ["--recipe", "keras-io", "--timesteps", "100"], "the continuous formulation has none"),
    (generate.main, ["--variance", "beta"], "--variance is a DDPM setting"),
    (generate.main, ["--eta", "1"], "--eta is a DDIM setting"),
])
def test_settings_that_would_do_nothing_are_one_line(main, argv, message, tmp_path, capsys):
    assert exit_code(main, [*argv, "--data-dir" if main is train.main else "--output",
                            str(tmp_path / "unused")]) == 2
    assert_one_line_error(capsys, message)


@pytest.fixture(scope="module")
def unadapted():
    model = DiffusionModel(seed=0, **TINY)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    return model


def test_fit_before_adapting_the_normaliser_is_one_line(unadapted, tiny_images):
    with pytest.raises(UsageError, match=r"^the normaliser has not been adapted to the data: call "
                                         r"model.normalizer.adapt\(images / 255.0\)"):
        unadapted.fit(tiny_images[:16], epochs=1, verbose=0)


@pytest.mark.parametrize("images, message", [
    (lambda images: images * 255.0, "float images must be in \\[0, 1\\], these reach 0 to 255"),
    (lambda images: images[..., :1], "shaped \\(16, 16, 1\\) but this model makes \\(16, 16, 3\\)"),
    (lambda images: np.repeat(np.repeat(images, 2, 1), 2, 2),
     "shaped \\(32, 32, 3\\) but this model makes \\(16, 16, 3\\)"),
])
def test_fit_refuses_images_it_would_learn_wrong(images, message, tiny_images):
    model = DiffusionModel(seed=0, **TINY)
    model.normalizer.adapt(tiny_images)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    with pytest.raises(UsageError, match=message):
        model.fit(images(tiny_images[:16]), epochs=1, verbose=0)


def test_the_attention_sides_of_a_config_are_checked_where_it_is_made():
    assert ModelConfig(image_size=16, widths=(8, 16), attention_resolutions=(8,))
    with pytest.raises(UsageError, match="choose among \\[16, 8\\]"):
        ModelConfig(image_size=16, widths=(8, 16), attention_resolutions=(4,))


def test_the_run_says_how_many_images_train_and_how_many_score(tiny_folder):
    from diffusion_keras.cli.train import config_from_args, parser, what_is_trained
    from diffusion_keras.data import open_images

    images = open_images(16, data_dir=str(tiny_folder))
    message = what_is_trained(images, config_from_args(parser().parse_args(
        ["--validation-split", "0.2"])))
    assert message.startswith("39 images of shape (16, 16, 3) (9 more held out to score the EMA "
                              "network each epoch; best.keras is the lowest validation loss)")
    assert "none held out: 5% of them would be fewer than 8, so best.keras is the lowest " \
           "training loss" in what_is_trained(images, config_from_args(parser().parse_args([])))
    assert "none held out (--validation-split 0)" in what_is_trained(
        images, config_from_args(parser().parse_args(["--validation-split", "0"])))


def test_a_cache_folder_that_cannot_be_written_is_one_line(tiny_folder, tmp_path):
    from diffusion_keras.data import open_images

    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(UsageError, match="cannot write to cache folder .* is not a folder; choose "
                                         "another --cache-dir"):
        open_images(16, data_dir=str(tiny_folder), cache_dir=str(tmp_path / "file" / "cache"))


def test_pictures_keep_their_titles_and_labels_whole(tmp_path):
    """Titles and row labels wider than the images grow the saved picture instead of being cut."""
    strip = np.zeros((1, 8, 32, 3))
    path = str(tmp_path / "table.png")
    figure = plotting.plot_image_table([[strip[0]]], ["guidance 1"], "A title much wider than one "
                                       "strip of four small images", path, size=1.0,
                                       row_titles=["automobile"])
    drawn_width = figure.get_size_inches()[0] * figure.dpi
    assert Image.open(path).size[0] > drawn_width


def test_a_grid_of_large_images_is_shrunk_to_a_readable_file(tmp_path):
    noise = np.random.default_rng(0).random((4, 1100, 1100, 3))  # a 2203-pixel grid
    plotting.save_image_grid(noise, str(tmp_path / "grid.png"))
    picture = Image.open(tmp_path / "grid.png")
    assert max(picture.size) <= plotting.MAX_PICTURE_SIDE
    assert os.path.getsize(tmp_path / "grid.png") < 4 * 2**20

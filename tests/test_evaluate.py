"""evaluate.py end to end on a tiny trained checkpoint with randomly initialised InceptionV3."""

import json
import os

import keras
import pytest

from diffusion_keras.cli import evaluate
from tests.test_cli import assert_one_line_error, exit_code

RANDOM_INCEPTION = ["--inception-weights", "random", "--inception-size", "75"]


@pytest.fixture(scope="module")
def checkpoint(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "epoch_0008.keras"
    path.parent.mkdir()
    trained_model.save(str(path))
    return path


@pytest.mark.slow
def test_evaluate_reports_kid_fid_and_reuses_the_cached_reference(checkpoint, tiny_folder, tmp_path,
                                                                  capsys):
    argv = ["--checkpoint", str(checkpoint), "--num-images", "6", "--steps", "2", "--data-dir",
            str(tiny_folder), "--kid-images", "4", "--batch-size", "4", "--cache-dir",
            str(tmp_path / "cache"), *RANDOM_INCEPTION]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "KID" in out and "FID" in out and "6 images, dpmpp2m 2 steps, EMA network" in out
    result_path = (checkpoint.parent /
                   "epoch_0008_evaluation_inception-random-75px_dpmpp2m_log_snr_steps2_seed0_n6.json")
    first = json.loads(result_path.read_text())
    assert first["num_images"] == 6 and first["steps"] == 2 and first["num_real_images"] == 48
    assert first["fid"] >= 0 and first["kid_images"] == 4 and not first["reference_reused"]
    cache = first["reference_cache"]
    written = os.path.getmtime(cache)

    assert evaluate.main(argv) == 0
    assert "reused from" in capsys.readouterr().out
    second = json.loads(result_path.read_text())
    assert second["reference_reused"] and second["reference_cache"] == cache
    assert os.path.getmtime(cache) == written
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-4)
    assert second["kid"] == pytest.approx(first["kid"], rel=1e-3, abs=1e-12)

    # one seed per image: another batch size scores the same images
    assert evaluate.main([*argv, "--batch-size", "3"]) == 0
    assert json.loads(result_path.read_text())["fid"] == pytest.approx(first["fid"], rel=1e-3)


@pytest.mark.slow
def test_evaluate_samples_with_the_chosen_sampler(checkpoint, tiny_folder, tmp_path):
    argv = ["--checkpoint", str(checkpoint), "--num-images", "4", "--steps", "3", "--data-dir",
            str(tiny_folder), "--kid-images", "4", "--cache-dir", str(tmp_path / "cache"),
            "--sampler", "ddim", "--eta", "1", "--spacing", "quadratic", "--quiet", *RANDOM_INCEPTION]
    assert evaluate.main(argv) == 0
    result = json.loads((checkpoint.parent / "epoch_0008_evaluation_inception-random-75px_"
                                             "ddim-eta1_quadratic_steps3_seed0_n4.json").read_text())
    assert (result["sampler"], result["eta"], result["spacing"]) == ("ddim", 1.0, "quadratic")


def test_missing_imagenet_weights_are_one_line_and_exit_2(checkpoint, tiny_folder, monkeypatch,
                                                         capsys):
    def offline(**kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    argv = ["--checkpoint", str(checkpoint), "--num-images", "2", "--data-dir", str(tiny_folder)]
    assert exit_code(evaluate.main, argv) == 2
    assert_one_line_error(capsys, "could not be downloaded (URL fetch failure); pass "
                                  "--inception-weights PATH")


@pytest.mark.parametrize("argv, message", [
    (["--inception-weights", "{missing}"], "does not exist"),
    (["--inception-size", "32", "--inception-weights", "random"], "at least 75"),
    (["--num-images", "0"], "--num-images: must be a positive integer"),
    (["--split", "validation"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, checkpoint, tiny_folder, tmp_path, capsys):
    argv = [arg.format(missing=tmp_path / "missing.h5") for arg in argv]
    code = exit_code(evaluate.main, ["--checkpoint", str(checkpoint), "--data-dir", str(tiny_folder),
                                     *argv])
    assert code == 2
    assert_one_line_error(capsys, message)


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """An untrained 32x32 RGB model: the CIFAR-10 classifier's input size."""
    from diffusion_keras import DiffusionModel

    model = DiffusionModel(image_size=32, widths=(8, 16), block_depth=1, embedding_dims=8, seed=0)
    path = tmp_path_factory.mktemp("cifar_like") / "cifar_like.keras"
    model.save(str(path))
    return path


@pytest.mark.slow
def test_cifar10_features_give_fd_and_kd_cifar10_never_fid(cifar_like, checkpoint, tiny_folder,
                                                           tmp_path, capsys):
    argv = ["--num-images", "6", "--steps", "2", "--data-dir", str(tiny_folder), "--kid-images",
            "4", "--cache-dir", str(tmp_path / "cache"), "--features", "cifar10", "--quiet"]
    assert evaluate.main(["--checkpoint", str(cifar_like), *argv]) == 0
    out = capsys.readouterr().out
    assert "KD-cifar10 " in out and " FD-cifar10 " in out and "not comparable with FID" in out
    result = json.loads((cifar_like.parent / "cifar_like_evaluation_cifar10_dpmpp2m_log_snr_"
                                             "steps2_seed0_n6.json").read_text())
    assert result["features"] == "cifar10" and result["fd_cifar10"] > 0
    assert "fid" not in result and "kid" not in result
    assert exit_code(evaluate.main, ["--checkpoint", str(checkpoint), *argv]) == 2  # 16 px
    assert_one_line_error(capsys, "--features cifar10 scores 32x32 RGB images")


def test_a_bad_inception_setting_never_falls_back_to_other_features(cifar_like, tiny_folder,
                                                                   tmp_path, capsys):
    for argv, message in ((["--inception-weights", str(tmp_path / "typo.h5")], "does not exist"),
                          (["--inception-size", "50"], "at least 75")):
        assert exit_code(evaluate.main, ["--checkpoint", str(cifar_like), "--data-dir",
                                         str(tiny_folder), *argv]) == 2
        assert_one_line_error(capsys, message)


@pytest.mark.slow
def test_without_inception_weights_a_cifar10_like_model_falls_back_to_cifar10_features(
        cifar_like, tiny_folder, tmp_path, monkeypatch, capsys, caplog):
    path = str(cifar_like)

    def offline(**kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    argv = ["--checkpoint", path, "--num-images", "4", "--steps", "2", "--data-dir", str(tiny_folder),
            "--kid-images", "4", "--cache-dir", str(tmp_path / "cache")]
    assert evaluate.main(argv) == 0
    assert "FD-cifar10" in capsys.readouterr().out
    assert "scoring in the CIFAR-10 classifier's features instead" in caplog.text

"""The benchmark runs and reports every figure it promises (its numbers are not asserted)."""

import json

import pytest

from diffusion_keras import bench
from diffusion_keras.cli import bench as bench_cli
from diffusion_keras.config import ModelConfig
from diffusion_keras.unet import build_unet


@pytest.mark.slow
def test_bench_prints_a_json_line_and_a_table(capsys):
    assert bench_cli.main(["--image-size", "8", "--batch-size", "4", "--widths", "4,8",
                       "--block-depth", "1", "--train-steps", "2", "--sample-steps", "2",
                       "--precision", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = json.loads(lines[0])
    for key in ("train_img_s", "sample_img_s", "train_tflop_s", "host_peak_mib", "params",
                "forward_gflops_per_image"):
        assert row[key] is not None and row[key] >= 0
    assert row["train_img_s"] > 0 and row["sample_img_s"] > 0
    assert lines[1].startswith("backend | precision")


@pytest.mark.slow
def test_peak_tflops_adds_the_model_flop_utilisation(capsys):
    assert bench_cli.main(["--image-size", "8", "--batch-size", "4", "--widths", "4,8",
                       "--block-depth", "1", "--train-steps", "2", "--sample-steps", "2",
                       "--precision", "float32", "--peak-tflops", "1e-4"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["train_mfu"] == round(row["train_tflop_s"] / 1e-4, 3) > 0
    assert row["sample_mfu"] == round(row["sample_tflop_s"] / 1e-4, 3) > 0


def test_flop_count_matches_a_hand_count():
    network = build_unet(ModelConfig(image_size=8, widths=(4, 8), block_depth=1, embedding_dims=4,
                                     embedding="input"))
    # 1x1 stem: 8*8*4*3; block at 8x8 (in 8 = 4 stem + 4 embedding, out 4): 1x1 skip 8*8*4*8,
    # 3x3 8->4 and 4->4; bottom block at 4x4 (4->8): skip 4*4*8*4, 3x3 4->8, 8->8;
    # up block at 8x8 (8+4 -> 4): skip 8*8*4*12, 3x3 12->4, 4->4; output 1x1 4->3.
    macs = (64 * 4 * 3 + 64 * 4 * 8 + 64 * 9 * 8 * 4 + 64 * 9 * 4 * 4
            + 16 * 8 * 4 + 16 * 9 * 4 * 8 + 16 * 9 * 8 * 8
            + 64 * 4 * 12 + 64 * 9 * 12 * 4 + 64 * 9 * 4 * 4 + 64 * 3 * 4)
    assert bench.forward_flops_per_image(network) == 2 * macs


@pytest.mark.slow
def test_compare_reference_times_it_before_and_after_and_prints_ratios(tmp_path, capsys):
    reference = tmp_path / "reference.py"
    reference.write_text("print('ref_params=10\\nref_sample_img_s=2.0\\nref_train_img_s=4.0')\n")
    assert bench_cli.main(["--image-size", "8", "--batch-size", "4", "--widths", "4,8",
                       "--block-depth", "1", "--train-steps", "2", "--sample-steps", "2",
                       "--precision", "float32", "--compare-reference", str(reference)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["reference_after"]["ref_train_img_s"] == 4.0
    row = json.loads(lines[1])
    assert row["train_vs_reference"] == round(row["train_img_s"] / 4.0, 2)
    assert row["sample_vs_reference"] == round(row["sample_img_s"] / 2.0, 2)
    assert lines[-1].startswith("speed-up over the reference: training ")


def test_a_non_positive_peak_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit:
        bench_cli.main(["--peak-tflops", "0"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--peak-tflops: must be positive, got 0.0 (see --help)")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--compare-reference", "missing.py"], "reference script 'missing.py' does not exist"),
    (["--image-size", "7"], "image size 7 is not divisible by 8"),
])
def test_bad_input_is_one_line_before_any_work(argv, message, capsys):
    assert bench_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1

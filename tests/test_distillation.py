"""Distillation (distill.py, `distillation.distill`): students made, sampled, saved, resumed and
refused, on tiny teachers; the same story on every backend (slow, in their own processes)."""

import json
import os
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from diffusion_keras import distillation, runs, seeding
from diffusion_keras.config import (
    DISTILLATION_OPTIMIZATION,
    DistillationConfig,
    OptimizationConfig,
    RunConfig,
    TrainingConfig,
)
from diffusion_keras.errors import UsageError
from diffusion_keras.samplers import ddim_step
from tests.conftest import TINY, run_on_backend
from tests.test_resume import InterruptAt

LOSSES = ("loss", "noise_loss", "image_loss")


def tiny_teacher(path, images, class_names=(), labels=None):
    """A tiny flow model fitted for two epochs and saved at `path`."""
    from diffusion_keras import DiffusionModel
    from diffusion_keras.data import ImageBatches, preprocess

    keras.utils.set_random_seed(0)
    model = DiffusionModel(channels=3, seed=0, class_names=class_names, **TINY)
    model.normalizer.adapt(preprocess(images))
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    model.fit(ImageBatches(images, 16, seed=0, labels=labels), epochs=2, verbose=0)
    model.save(path)
    return path


def settings(teacher, method="reflow", calls=(2, 1), epochs=2, **changes):
    return TrainingConfig(
        optimization=OptimizationConfig(epochs=epochs, batch_size=8, optimizer="adamw",
                                        learning_rate=1e-3, precision="float32"),
        run=RunConfig(seed=0),
        distillation=DistillationConfig(teacher=teacher, method=method, calls=calls, pairs=40,
                                        steps_per_epoch=3, **{
                                            "teacher_steps": 3 if method == "reflow"
                                            else 2 * calls[0], **changes}))


def losses(run_dir):
    with open(os.path.join(run_dir, "log.json")) as file:
        return [[row[key] for key in LOSSES] for row in json.load(file)]


def distillation_story(teacher, images, folder, output):
    """Each method, uninterrupted and interrupted-then-resumed, on this process's backend: the
    losses of every epoch and the student's images at its calls, before and after a .keras round
    trip, saved in `output` (.npz)."""
    results = {}
    for method, calls, data in (("reflow", (2, 1), None), ("progressive", (2,), images)):
        whole = os.path.join(folder, f"{method}-whole")
        student = distillation.distill(whole, settings(teacher, method, calls), data, verbose=0)
        parted = os.path.join(folder, f"{method}-parted")
        with pytest.raises(KeyboardInterrupt):
            distillation.distill(parted, settings(teacher, method, calls), data, verbose=0,
                                 callbacks=[InterruptAt(1, 1)])
        resumed = distillation.distill(parted, settings(teacher, method, calls), data, verbose=0,
                                       resume_from=runs.resume_point(parted))
        reloaded = runs.load_checkpoint(runs.find_checkpoint(whole))
        for name, model in (("whole", student), ("resumed", resumed), ("reloaded", reloaded)):
            for count in calls:
                results[f"{method}_{name}_{count}"] = model.generate(4, count, seed=0,
                                                                     verbose=False)
        results[f"{method}_whole_losses"] = np.array(losses(whole))
        results[f"{method}_resumed_losses"] = np.array(losses(parted))
    np.savez(output, **results)


@pytest.fixture(scope="module")
def tiny_uint8(tiny_folder):
    from diffusion_keras.data import load_image_folder

    return load_image_folder(str(tiny_folder), TINY["image_size"])


@pytest.fixture(scope="module")
def teacher(tiny_uint8, tmp_path_factory):
    return tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.keras"), tiny_uint8)


def test_a_reflow_student_samples_in_any_calls_and_records_how_it_was_made(teacher, tmp_path):
    run_dir = str(tmp_path / "reflow")
    student = distillation.distill(run_dir, settings(teacher), verbose=0)
    assert isinstance(student, distillation.Student)
    assert (student.config.distillation, student.config.student_calls) == ("reflow", (2, 1))
    assert student.config.default_sampler == "ddim"
    for calls in (1, 2, 4):
        assert np.isfinite(student.generate(3, calls, seed=0, verbose=False)).all()
    names = sorted(os.listdir(os.path.join(run_dir, runs.SAMPLES_DIR)))
    assert names == ["epoch_0001_calls1.png", "epoch_0001_calls2.png", "epoch_0002_calls1.png",
                     "epoch_0002_calls2.png"]
    assert len(os.listdir(os.path.join(run_dir, distillation.PAIRS_DIR))) == 1
    saved = json.load(open(os.path.join(run_dir, "config.json")))
    assert saved["distillation"]["method"] == "reflow" and saved["model"]["distillation"] == "reflow"
    assert [row["epoch"] for row in json.load(open(os.path.join(run_dir, "log.json")))] == [1, 2]
    assert not os.path.exists(os.path.join(run_dir, runs.CHECKPOINT_DIR, "best.keras"))


@pytest.mark.slow
def test_reflow_starts_from_the_teacher_and_learns_its_pairs(tiny_uint8, tmp_path):
    """Before any step the student is the teacher; after some, its one-call images are nearer the
    pairs' images (the teacher's in 3 calls) than the teacher's own one call is. The teacher is
    untrained, so its paths are far from straight."""
    from diffusion_keras import DiffusionModel
    from diffusion_keras.data import preprocess

    keras.utils.set_random_seed(1)
    untrained = DiffusionModel(channels=3, seed=0, norm="none", **TINY)  # no batch statistics
    untrained.normalizer.adapt(preprocess(tiny_uint8))
    rng = np.random.default_rng(0)
    for weight in untrained.network.weights:  # the zero-initialised output layer: curved paths
        if not np.any(keras.ops.convert_to_numpy(weight)):
            weight.assign(rng.normal(0.0, 0.5, weight.shape).astype("float32"))
    untrained.ema_network.set_weights(untrained.network.get_weights())
    teacher = str(tmp_path / "untrained.keras")
    untrained.save(teacher)
    config = settings(teacher, epochs=20, calls=(1,)).updated({"distillation": {"pairs": 8}})
    student = distillation.start_student(untrained, config.distillation, config.optimization, 3,
                                         seed=0)
    noise = seeding.pair_noise(0, 0, 8, untrained.image_shape)
    one_call = untrained.generate(8, 1, initial_noise=noise, verbose=False)
    np.testing.assert_allclose(student.generate(8, 1, initial_noise=noise, verbose=False),
                               one_call, atol=1e-5)
    pairs = untrained.generate(8, 3, initial_noise=noise, verbose=False)
    trained = distillation.distill(str(tmp_path / "reflow"), config, verbose=0)
    learnt = trained.generate(8, 1, initial_noise=noise, network="online", verbose=False)
    assert np.abs(learnt - pairs).mean() < 0.75 * np.abs(one_call - pairs).mean()


def test_pairs_come_from_their_own_noise_stream_and_are_kept_on_disk(teacher, tmp_path):
    teacher_model = runs.load_checkpoint(teacher)
    folder = str(tmp_path)
    images, noises, labels, _ = distillation.make_pairs(teacher_model, folder, 5, 2, seed=3,
                                                        verbose=False)
    assert labels is None and images.dtype == np.uint8 and images.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(noises, seeding.pair_noise(3, 0, 5, (16, 16, 3)))
    assert not np.allclose(noises, seeding.initial_noise(3, 0, 5, (16, 16, 3)))
    np.testing.assert_array_equal(
        images, np.round(teacher_model.generate(5, 2, initial_noise=noises, verbose=False) * 255))
    again = distillation.make_pairs(teacher_model, folder, 5, 2, seed=3, verbose=False)
    np.testing.assert_array_equal(again[0], images)  # read back, not sampled again


@pytest.mark.parametrize("teacher_steps", [4, 6])
def test_progressive_targets_make_one_student_step_land_on_the_teacher_steps(teacher, tmp_path,
                                                                            teacher_steps):
    teacher_model = runs.load_checkpoint(teacher)
    config = settings(teacher, "progressive", (2,), teacher_steps=teacher_steps)
    student = distillation.start_student(teacher_model, config.distillation, config.optimization,
                                         3, seed=0)
    assert student.config.teacher_steps == teacher_steps
    noisy = keras.random.normal((4, 16, 16, 3), seed=1)
    times = np.full((4, 1, 1, 1), 1.0, "float32")
    targets, target_noises = student.progressive_targets(noisy, times)
    schedule = student.formulation.schedule
    expected = noisy
    grid = np.linspace(1.0, 0.5, teacher_steps // 2 + 1)
    for now, then in zip(grid[:-1], grid[1:]):
        pred_noises, pred_images = teacher_model.denoise(expected, *schedule(times * 0 + now))
        expected = ddim_step(pred_noises, pred_images, schedule(times * 0 + then))
    np.testing.assert_allclose(ddim_step(target_noises, targets, schedule(times * 0 + 0.5)),
                               expected, atol=2e-3)
    noise_rates, signal_rates = schedule(times)
    np.testing.assert_allclose(signal_rates * targets + noise_rates * target_noises, noisy,
                               atol=2e-3)


@pytest.mark.slow
def test_a_progressive_student_samples_in_its_calls_only(teacher, tiny_uint8, tmp_path):
    student = distillation.distill(str(tmp_path / "p"), settings(teacher, "progressive", (2,)),
                                   tiny_uint8, verbose=0)
    assert np.isfinite(student.generate(2, 2, verbose=False)).all()
    for kwargs in ({"diffusion_steps": 4}, {"diffusion_steps": 2, "sampler": "dpmpp2m"},
                   {"diffusion_steps": 2, "spacing": "karras"}):
        with pytest.raises(UsageError, match="distilled .progressive. to sample in 2 network calls"):
            student.generate(2, **{"seed": 0, "verbose": False, **kwargs})
    path = str(tmp_path / "student.keras")
    student.save(path)
    assert isinstance(runs.load_checkpoint(path), distillation.Student)
    with pytest.raises(UsageError, match="progressive --calls 1"):
        distillation.distill(str(tmp_path / "again"), settings(path, "progressive", (2,)),
                             tiny_uint8, verbose=0)


@pytest.mark.slow
def test_a_conditional_teacher_gives_a_conditional_student_that_takes_guidance(tiny_uint8,
                                                                                tmp_path):
    labels = np.arange(len(tiny_uint8)) % 2
    teacher = tiny_teacher(str(tmp_path / "conditional.keras"), tiny_uint8, ("a", "b"), labels)
    teacher_model = runs.load_checkpoint(teacher)
    _, _, pair_labels, _ = distillation.make_pairs(teacher_model, str(tmp_path / "pairs"), 40, 2,
                                                   seed=0, verbose=False)
    assert set(pair_labels) == {0, 1, teacher_model.null_label}  # unconditional pairs too
    for method, calls, data in (("reflow", (2, 1), None), ("progressive", (2,), tiny_uint8)):
        student = distillation.distill(str(tmp_path / method), settings(teacher, method, calls),
                                       data, labels if data is not None else None, verbose=0)
        assert student.config.class_names == ("a", "b")
        images = student.generate(4, calls[0], seed=0, labels=[0, 1, 0, 1], guidance=2.0,
                                  verbose=False)
        assert np.isfinite(images).all()
    with pytest.raises(UsageError, match="labels"):
        distillation.distill(str(tmp_path / "nolabels"), settings(teacher, "progressive", (2,)),
                             tiny_uint8, verbose=0)


@pytest.mark.parametrize("changes, message", [
    ({"method": "progressive", "calls": (4, 2)}, "one call count"),
    ({"calls": ()}, "network calls it is distilled for"),
    ({"calls": (0,)}, "calls must be"),
    ({"pairs": 0}, "pairs must be"),
    ({"minutes": 0}, "minutes must be"),
    ({"method": "progressive", "calls": (4,), "teacher_steps": 10}, "multiple of --calls"),
    ({"method": "progressive", "calls": (4,), "teacher_steps": 4}, "multiple of --calls above"),
])
def test_bad_distillation_settings_are_one_line_errors(changes, message):
    with pytest.raises(UsageError, match=message) as error:
        DistillationConfig(**changes)
    assert "\n" not in str(error.value)


def test_the_teacher_steps_default_to_the_methods_and_a_progressive_teachers_own():
    from diffusion_keras.config import ModelConfig

    model = ModelConfig()
    assert DistillationConfig(method="reflow").resolved_teacher_steps(model) == 10
    assert DistillationConfig().resolved_teacher_steps(model) == 20  # progressive, 4 calls
    assert DistillationConfig(method="progressive", calls=(3,)).resolved_teacher_steps(model) == 6
    student = ModelConfig(distillation="progressive", student_calls=(4,), teacher_steps=20)
    assert DistillationConfig(method="progressive", calls=(2,)).resolved_teacher_steps(
        student) == 4
    saved_before = ModelConfig(distillation="progressive", student_calls=(4,))
    assert saved_before.teacher_steps == 8  # Salimans & Ho's halving, all there was


def test_progressive_distillation_reads_the_teacher_runs_data_unless_told(teacher, tmp_path):
    from diffusion_keras.cli import distill as distill_cli

    run_dir = tmp_path / "teacher_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    in_run = str(run_dir / "checkpoints" / "epoch_0001.keras")
    with open(teacher, "rb") as source, open(in_run, "wb") as copy:
        copy.write(source.read())
    saved = TrainingConfig(run=RunConfig(data_dir="/photos", limit=300))
    runs.write_json(str(run_dir / "config.json"), saved.to_dict())

    def run_settings(*flags):
        return distill_cli.config_from_args(distill_cli.parser().parse_args(
            ["--checkpoint", str(run_dir), *flags])).run

    assert (run_settings().data_dir, run_settings().limit) == ("/photos", 300)
    assert run_settings("--data-dir", "/other").data_dir == "/other"
    assert run_settings("--limit", "50").limit == 50
    assert run_settings("--method", "reflow").data_dir is None
    with pytest.raises(UsageError, match="not in a run folder that names them: pass --data-dir"):
        distill_cli.config_from_args(distill_cli.parser().parse_args(["--checkpoint", teacher]))


def test_the_learning_rate_decays_over_the_epochs_and_minutes_only_cap_them(teacher):
    from diffusion_keras.cli import distill as distill_cli

    def optimization(*flags):
        return distill_cli.config_from_args(distill_cli.parser().parse_args(
            ["--checkpoint", teacher, "--method", "reflow", *flags])).optimization

    default = optimization("--minutes", "5")
    assert (default.learning_rate_schedule, default.epochs, default.learning_rate) == (
        "cosine", DISTILLATION_OPTIMIZATION["epochs"], 4e-4)
    assert optimization("--epochs", "3").epochs == 3
    assert optimization("--learning-rate-schedule", "constant").learning_rate_schedule == "constant"


@pytest.mark.parametrize("epochs, steps, stopped_after", [(3, 4, (1, 1)), (1, 1, None)])
def test_the_time_budget_records_where_it_cut_a_run_short(epochs, steps, stopped_after):
    """A spent budget stops at the first step; one spent at the run's very last step cut nothing."""
    from diffusion_keras.callbacks import TimeBudget

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    budget = TimeBudget(minutes=0.0)
    history = model.fit(np.zeros((4, 1)), np.zeros((4, 1)), batch_size=1, steps_per_epoch=steps,
                        epochs=epochs, callbacks=[budget], verbose=0)
    assert (len(history.epoch), budget.stopped_after) == (1, stopped_after)


def test_a_run_cut_short_says_where_and_the_epochs_that_fit_a_whole_decay():
    budget = SimpleNamespace(minutes=14.3, stopped_after=(8, 15), params={"steps": 100})
    cosine = distillation.budget_note(budget, OptimizationConfig(epochs=8,
                                                                 learning_rate_schedule="cosine"))
    assert cosine == ("note: --minutes 14.3 stopped the run after step 15 of 100 in epoch 8 of 8, "
                      "before the cosine learning rate reached 0; distil again with --epochs 7 "
                      "for the whole decay in those minutes")
    constant = distillation.budget_note(budget, OptimizationConfig(
        epochs=8, learning_rate_schedule="constant"))
    assert constant == "note: --minutes 14.3 stopped the run after step 15 of 100 in epoch 8 of 8"


def test_teachers_that_cannot_be_distilled_are_refused_before_any_folder(tiny_uint8, tmp_path):
    from diffusion_keras import DiffusionModel

    model = DiffusionModel(channels=3, formulation="continuous", **TINY)
    path = str(tmp_path / "continuous.keras")
    model.save(path)
    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match="rectified-flow"):
        distillation.distill(str(run_dir), settings(path), verbose=0)
    flow = str(tmp_path / "flow.keras")
    DiffusionModel(channels=3, **TINY).save(flow)
    with pytest.raises(UsageError, match="training images"):
        distillation.distill(str(run_dir), settings(flow, "progressive", (2,)), verbose=0)
    assert not run_dir.exists()


@pytest.mark.slow
def test_training_refuses_a_students_settings_and_a_distillation_folder(teacher, tmp_path):
    from diffusion_keras import training

    run_dir = str(tmp_path / "d")
    distillation.distill(run_dir, settings(teacher, epochs=1), verbose=0)
    saved = runs.read_json(os.path.join(run_dir, "config.json"), "config")
    config = TrainingConfig.from_dict(saved)
    with pytest.raises(UsageError, match="distillation's settings"):
        training.train(np.zeros((16, 16, 16, 3), "uint8"), str(tmp_path / "t"), config)
    with pytest.raises(UsageError, match="made by distill.py, not train.py"):
        training.check_resume(run_dir, TrainingConfig(config.model, config.optimization, config.run),
                              runs.resume_point(run_dir))


def test_the_command_line_distils_samples_and_refuses(teacher, tiny_folder, tmp_path, capsys):
    from diffusion_keras.cli import distill as distill_cli
    from diffusion_keras.cli import generate as generate_cli
    from diffusion_keras.cli import train as train_cli

    run_dir = str(tmp_path / "student")
    argv = ["--checkpoint", teacher, "--method", "reflow", "--pairs", "24", "--teacher-steps", "2",
            "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "8", "--calls", "1", "--run-dir", run_dir]
    assert distill_cli.main(argv) == 0
    assert generate_cli.main(["--checkpoint", run_dir, "--steps", "1", "--num-images", "2",
                              "--quiet"]) == 0
    assert any(name.startswith("samples_epoch_0001_ddim-eta0_uniform_steps1")
               for name in os.listdir(os.path.join(run_dir, "generated")))
    capsys.readouterr()
    for main, args, message in (
            (train_cli.main, ["--resume", run_dir], "made by distill.py, not train.py"),
            (distill_cli.main, ["--resume", run_dir, "--pairs", "5"], "drop --pairs"),
            (distill_cli.main, ["--resume", run_dir], "pass a larger --epochs"),
            (distill_cli.main, argv, "already holds a run"),
            (distill_cli.main, [*argv[:-1], str(tmp_path / "x"), "--method", "progressive",
                                "--data-dir", str(tiny_folder), "--calls", "2,1"],
             "one call count")):
        assert main(args) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error
    assert not (tmp_path / "x").exists()
    capped = str(tmp_path / "capped")  # stopped by --minutes in its first step
    assert distill_cli.main(["--checkpoint", teacher, "--data-dir", str(tiny_folder), "--calls", "1",
                             "--teacher-steps", "2", "--epochs", "3", "--minutes", "1e-4",
                             "--steps-per-epoch", "2", "--batch-size", "8",
                             "--run-dir", capped]) == 0
    assert ("stopped the run after step 1 of 2 in epoch 1 of 3, before the cosine learning rate "
            "reached 0; distil again with a smaller --steps-per-epoch") in capsys.readouterr().out
    assert runs.checkpoint_epoch(runs.find_checkpoint(capped)) == 1


@pytest.mark.slow
def test_every_backend_distils_resumes_exactly_and_round_trips(teacher, tiny_uint8, tmp_path):
    """Reflow and progressive on TensorFlow, JAX and PyTorch: an interrupted, resumed run has the
    uninterrupted run's losses and images, and a reloaded student samples the same images."""
    outputs = {}
    for backend in ("tensorflow", "jax", "torch"):
        folder, output = tmp_path / backend, str(tmp_path / f"{backend}.npz")
        folder.mkdir()
        if backend == keras.backend.backend():
            distillation_story(teacher, tiny_uint8, str(folder), output)
        else:
            images = str(tmp_path / "images.npy")
            np.save(images, tiny_uint8)
            code = (f"import numpy as np; from tests.test_distillation import distillation_story; "
                    f"distillation_story({teacher!r}, np.load({images!r}), {str(folder)!r}, "
                    f"{output!r})")
            run_on_backend(backend, code)
        outputs[backend] = dict(np.load(output))
    for backend, results in outputs.items():
        for method, calls in (("reflow", (2, 1)), ("progressive", (2,))):
            np.testing.assert_allclose(results[f"{method}_resumed_losses"],
                                       results[f"{method}_whole_losses"], rtol=1e-4,
                                       err_msg=f"{backend} {method}")
            for count in calls:
                whole = results[f"{method}_whole_{count}"]
                for other in ("resumed", "reloaded"):
                    np.testing.assert_allclose(results[f"{method}_{other}_{count}"], whole,
                                               atol=1e-4, err_msg=f"{backend} {method} {other}")


import logging

import numpy as np
import pytest
from PIL import Image

from diffusion_keras.data import ImageBatches, load_image_folder, preprocess, tfds_source
from diffusion_keras.errors import UsageError


def test_folder_images_are_cropped_resized_uint8_nhwc(tiny_folder):
    images = load_image_folder(str(tiny_folder), 8)
    assert images.shape == (48, 8, 8, 3) and images.dtype == np.uint8
    assert images.max() > 200  # whole 0-255 range, not scaled


def test_limit_takes_a_seeded_subset(tiny_folder):
    first = load_image_folder(str(tiny_folder), 8, limit=10, seed=1)
    again = load_image_folder(str(tiny_folder), 8, limit=10, seed=1)
    other = load_image_folder(str(tiny_folder), 8, limit=10, seed=2)
    assert len(first) == 10
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_grayscale_folder_gives_one_channel_and_rgba_is_converted(tmp_path):
    Image.new("L", (12, 10), 128).save(tmp_path / "gray.png")
    Image.new("L", (10, 12), 30).save(tmp_path / "gray2.bmp")
    assert load_image_folder(str(tmp_path), 8).shape == (2, 8, 8, 1)
    Image.new("RGBA", (9, 9), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    Image.new("P", (9, 9)).save(tmp_path / "palette.gif")
    images = load_image_folder(str(tmp_path), 8)
    assert images.shape == (4, 8, 8, 3)


def test_unreadable_files_are_skipped_with_one_counted_warning(tiny_folder, tmp_path, caplog):
    for index in range(3):
        Image.new("RGB", (10, 10), (index, 0, 0)).save(tmp_path / f"good{index}.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    good = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="diffusion_keras"):
        images = load_image_folder(str(tmp_path), 8)
    assert len(images) == 3
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "skipped 3 image file(s) of 6" in warnings[0]
    assert "3 unreadable" in warnings[0]


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    with pytest.raises(UsageError, match="none of the 1 image files.*could be used"):
        load_image_folder(str(tmp_path), 8)


def test_missing_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_image_folder(str(tmp_path / "missing"), 8)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UsageError, match="holds no image files"):
        load_image_folder(str(tmp_path), 8)


def test_offline_tfds_download_points_to_data_dir(tmp_path, monkeypatch):
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # fail fast; the real default retries for minutes
    with pytest.raises(UsageError, match="--data-dir"):
        tfds_source("mnist")


def test_tfds_not_downloaded_and_offline_fails_at_once(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from diffusion_keras import data

    def download(*args, **kwargs):
        raise AssertionError("no download may be tried when the mirror cannot be reached")

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "reachable", lambda address: False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    with pytest.raises(UsageError, match="not downloaded yet.*cannot be reached.*--data-dir"):
        tfds_source("cifar10")


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with Orientation 6 (rotate 90 degrees to view): its left half
    (red) is the top once upright, so the loaded image is red on top and blue below."""
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)
    stored[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image_folder(str(tmp_path), 8)[0]
    assert image[0, 4, 0] > 200 and image[0, 4, 2] < 50, "top: red"
    assert image[7, 4, 2] > 200 and image[7, 4, 0] < 50, "bottom: blue"


def test_webp_and_tiff_images_are_read(tmp_path):
    for extension in ("webp", "tif", "tiff"):
        Image.new("RGB", (12, 12), (10, 200, 30)).save(tmp_path / f"image.{extension}")
    images = load_image_folder(str(tmp_path), 8)
    assert images.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(images[:, 4, 4, 1], 200, atol=8)


def test_unknown_tfds_name_is_an_error():
    with pytest.raises(UsageError, match="unknown dataset"):
        tfds_source("imagenet")


def test_preprocess_accepts_uint8_and_grayscale():
    images = preprocess(np.full((2, 4, 4), 255, np.uint8))
    assert images.shape == (2, 4, 4, 1) and images.dtype == np.float32 and images.max() == 1.0


def test_batches_are_reproducible_per_epoch_and_flip():
    images = np.arange(20 * 2 * 2 * 1, dtype="float32").reshape(20, 2, 2, 1)
    batches = ImageBatches(images, 8, seed=3)
    assert len(batches) == 2  # the incomplete last batch is dropped
    epoch0 = [batches[i] for i in range(2)]
    batches.on_epoch_end()
    epoch1 = [batches[i] for i in range(2)]
    replay = ImageBatches(images, 8, seed=3)
    np.testing.assert_array_equal(replay[0], epoch0[0])
    replay.set_epoch(1)
    np.testing.assert_array_equal(replay[1], epoch1[1])
    assert not np.array_equal(epoch0[0], epoch1[0])
    flipped = ImageBatches(images, 20, seed=0, shuffle=False)[0]
    assert any(np.array_equal(f, o[:, ::-1]) and not np.array_equal(f, o)
               for f, o in zip(flipped, images))


def test_fewer_images_than_a_batch_is_an_error():
    with pytest.raises(UsageError, match="smaller --batch-size"):
        ImageBatches(np.zeros((3, 2, 2, 1), "float32"), 8)


@pytest.mark.slow
def test_validation_through_the_fit_input_averages_every_batch(recwarn):
    """An untrained network predicts zero noise, so the validation noise MAE is E|N(0, 1)| = 0.798."""
    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.training import build_model

    images = np.random.default_rng(0).random((32, 16, 16, 3), dtype=np.float32)
    model = build_model(ModelConfig(image_size=16, widths=(8, 16), block_depth=1,
                                    formulation="continuous"),  # epsilon prediction
                        OptimizationConfig(learning_rate=0.0))
    model.normalizer.adapt(images)
    validation = ImageBatches(images, 8, flip=False, shuffle=False).fit_input()
    for _ in range(2):  # the second pass reuses Keras' validation iterator
        history = model.fit(ImageBatches(images, 8).fit_input(), steps_per_epoch=4,
                            validation_data=validation, verbose=0)
        assert history.history["val_noise_loss"][0] == pytest.approx(0.798, abs=0.03)
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]


def test_batches_keep_uint8_and_shards_make_up_the_global_batch():
    images = np.arange(24 * 2 * 2 * 1, dtype=np.uint8).reshape(24, 2, 2, 1)
    whole = ImageBatches(images, 8, seed=1, epoch=2)
    halves = [ImageBatches(images, 8, seed=1, epoch=2, shard=(index, 2)) for index in range(2)]
    for index in range(len(whole)):
        assert whole[index].dtype == np.uint8
        np.testing.assert_array_equal(np.concatenate([half[index] for half in halves]),
                                      whole[index])
    with pytest.raises(UsageError, match="multiple of the process count"):
        ImageBatches(images, 8, shard=(0, 3))


def test_batches_read_only_the_given_indices():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    batches = ImageBatches(images, 4, indices=np.arange(10, 20), flip=False)
    seen = np.concatenate([batches[index] for index in range(len(batches))]).ravel()
    assert len(batches) == 2 and set(seen) <= set(range(10, 20)) and len(set(seen)) == 8


def test_normalizer_sample_is_seeded_and_bounded(monkeypatch):
    from diffusion_keras import data

    monkeypatch.setattr(data, "NORMALIZER_SAMPLE_VALUES", 100 * 4 * 4 * 3)
    images = np.random.default_rng(0).integers(0, 256, (1000, 4, 4, 3), dtype=np.uint8)
    sample = data.normalizer_sample(images, np.arange(500, 1000), seed=3)
    assert sample.shape == (100, 4, 4, 3) and sample.dtype == np.float32 and sample.max() <= 1
    np.testing.assert_array_equal(sample, data.normalizer_sample(images, np.arange(500, 1000), 3))
    rows = {bytes(row) for row in (images[500:] / 255.0).astype("float32")}
    assert all(bytes(row) in rows for row in sample)  # only the given indices


def test_tfds_split_prepares_with_labels_and_limit_before_decoding(tmp_path, monkeypatch):
    """tensorflow-datasets' mock data: the split is read example by example, a seeded --limit of it
    decoded, and the labels and class names kept."""
    import tensorflow_datasets as tfds

    from diffusion_keras import data
    from diffusion_keras.data import open_images

    monkeypatch.setattr(data, "reachable", lambda address: True)  # mock_data downloads nothing
    monkeypatch.setattr(data, "split_size", lambda builder, split: 20)  # mock_data has no split info

    with tfds.testing.mock_data(num_examples=20):
        images = open_images(8, "cifar10", limit=12, seed=0, cache_dir=str(tmp_path))
        again = open_images(8, "cifar10", limit=12, seed=0, cache_dir=str(tmp_path))
    assert images.shape == (12, 8, 8, 3) and images[np.arange(12)].dtype == np.uint8
    assert len(images.class_names) == 10 and len(images.labels) == 12
    assert 0 <= images.labels.min() and images.labels.max() < 10
    assert again.path == images.path

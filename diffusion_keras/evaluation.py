"""Evaluate a checkpoint: KID and FID of EMA samples against real images, with cached references.

The real-image pass (load, extract, accumulate) is the slow half and never changes for a dataset, so
its statistics are cached on disk under a key naming everything they depend on. Without InceptionV3
weights, CIFAR-10-like models are scored in the project's own CIFAR-10 classifier features instead
(`cifar10_features`): the same two distances, named FD-cifar10 and KD-cifar10.
"""

import hashlib
import json
import logging
import os

import keras
import numpy as np

from diffusion_keras import (
    backend,
    checks,
    cifar10_features,
    distributed,
    memorization,
    metrics,
    plotting,
    posthoc_ema,
    runs,
    samplers,
)
from diffusion_keras.config import default_cache_dir
from diffusion_keras.data import open_images, preprocess
from diffusion_keras.errors import UsageError

log = logging.getLogger("diffusion_keras")


def extract_features(extractor, images, batch_size):
    """Features of images (uint8, or floats in [0, 1]) batch by batch."""
    return np.concatenate([
        np.asarray(extractor.predict_on_batch(preprocess(images[start:start + batch_size])))
        for start in range(0, len(images), batch_size)])


FEATURES = ("auto", "inception", "cifar10")
# what the two distances are called in each feature space: never "FID" outside InceptionV3's
METRIC_NAMES = {"inception": ("kid", "fid"), "cifar10": ("kd_cifar10", "fd_cifar10")}


def is_cifar10_like(channels, image_size):
    return channels == 3 and image_size == cifar10_features.IMAGE_SIZE


def feature_extractor(features, channels, image_size, inception_weights="imagenet",
                      inception_size=metrics.INCEPTION_SIZE):
    """(feature space name, extractor). "auto": InceptionV3 when its weights can be had, else the
    CIFAR-10 classifier's features for 32x32 RGB images (with a warning saying so)."""
    if features not in FEATURES:
        raise UsageError(f"unknown features {features!r}; choose one of {list(FEATURES)}")
    if features == "cifar10":
        if not is_cifar10_like(channels, image_size):
            raise UsageError(f"--features cifar10 scores 32x32 RGB images (the CIFAR-10 "
                             f"classifier's input); this model makes {image_size}x{image_size}x"
                             f"{channels}: use --features inception")
        return "cifar10", cifar10_features.cifar10_extractor(channels)
    metrics.check_inception_settings(inception_size, inception_weights)  # a typo never falls back
    try:
        return "inception", metrics.inception_extractor(channels, inception_size, inception_weights)
    except UsageError as error:
        if features == "inception" or inception_weights != "imagenet" or \
                not is_cifar10_like(channels, image_size):
            raise
        log.warning("%s; scoring in the CIFAR-10 classifier's features instead (FD-cifar10 and "
                    "KD-cifar10, not FID and KID)", str(error).split(";")[0])
        return "cifar10", cifar10_features.cifar10_extractor(channels)


def training_reference(images, indices, seed=0, count=10000, batch_size=64):
    """(metric name, extractor, `metrics.FeatureStatistics`) of a seeded `count` of the training
    images at `indices`, for the FD a run scores during training: in the CIFAR-10 classifier's
    features for 32x32 RGB images, else InceptionV3's (`feature_extractor`'s "auto")."""
    from diffusion_keras import image_files

    channels, image_size = images.shape[-1], images.shape[1]
    features = "cifar10" if is_cifar10_like(channels, image_size) else "inception"
    space, extractor = feature_extractor(features, channels, image_size)
    chosen = np.sort(np.asarray(indices)[image_files.seeded_subset(len(indices), count, seed)])
    statistics = metrics.FeatureStatistics()
    for start in range(0, len(chosen), batch_size):
        statistics.update(extract_features(extractor, images[chosen[start:start + batch_size]],
                                           batch_size))
    return METRIC_NAMES[space][1], extractor, statistics


def reference_key(source, image_size, channels, features, inception_weights, inception_size, limit,
                  kid_images):
    """Everything the real-image statistics depend on; random weights also depend on the backend."""
    if features == "cifar10":
        return {"source": source, "image_size": image_size, "channels": channels,
                "features": "cifar10", "weights": cifar10_features.weights_digest(),
                "limit": limit, "kid_images": kid_images}
    weights = inception_weights if inception_weights in ("imagenet", None) else os.path.abspath(
        inception_weights)
    return {"source": source, "image_size": image_size, "channels": channels,
            "inception_weights": weights or f"random-{backend.BACKEND}",
            "inception_size": inception_size, "limit": limit, "kid_images": kid_images}


def reference_statistics(load_real_images, key, extractor, cache_dir, batch_size, seed=0):
    """(FeatureStatistics, KID features, cache path, reused) for the real images, cached as .npz."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"reference_{digest}.npz")
    if os.path.isfile(path):
        with np.load(path) as cached:
            statistics = metrics.FeatureStatistics(int(cached["count"]), cached["sums"],
                                                   cached["outer_sums"], cached["covariance_root"])
            return statistics, cached["kid_features"], path, True
    images = load_real_images()
    if images.shape[-1] != key["channels"] or images.shape[1] != key["image_size"]:
        raise UsageError(f"the real images have shape {images.shape[1:]} but the model makes "
                         f"{(key['image_size'],) * 2 + (key['channels'],)}; evaluate against "
                         "the dataset the model was trained on")
    statistics = metrics.FeatureStatistics()
    kid_indices = set(np.random.default_rng(seed).permutation(len(images))[:key["kid_images"]])
    kid_features = []
    for start in range(0, len(images), batch_size):
        features = extract_features(extractor, images[start:start + batch_size], batch_size)
        statistics.update(features)
        kid_features += [row for index, row in enumerate(features, start) if index in kid_indices]
    if not distributed.is_writer():
        return statistics, np.stack(kid_features), path, False
    os.makedirs(cache_dir, exist_ok=True)
    with runs.atomic_write(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, count=statistics.count, sums=statistics.sums,
                 outer_sums=statistics.outer_sums, covariance_root=statistics.covariance_root,
                 kid_features=np.stack(kid_features),
                 key=json.dumps(key))
    return statistics, np.stack(kid_features), path, False


def result_path(checkpoint, num_images, feature_space, sampling_name, ema_length=None):
    """Where an evaluation is saved: beside the checkpoint, named by everything that changes it."""
    ema = "" if ema_length is None else f"_ema{ema_length:g}"
    return (f"{os.path.splitext(checkpoint)[0]}{ema}_evaluation_{feature_space}_{sampling_name}"
            f"_n{num_images}.json")


def feature_space_name(features, inception_weights, inception_size):
    """cifar10, or inception-imagenet / inception-random / inception-<weights file> (-<size>px
    when not InceptionV3's own 299)."""
    if features == "cifar10":
        return "cifar10"
    weights = {"imagenet": "imagenet", None: "random"}.get(
        inception_weights, os.path.splitext(os.path.basename(str(inception_weights)))[0])
    size = "" if inception_size == metrics.INCEPTION_SIZE else f"-{inception_size}px"
    return f"inception-{weights}{size}"


def evaluate(checkpoint, num_images=10000, diffusion_steps=20, dataset="cifar10", split="train",
             data_dir=None, limit=None, inception_weights="imagenet",
             inception_size=metrics.INCEPTION_SIZE, kid_images=1000, batch_size=None, seed=0,
             cache_dir=None, extractor=None, features="auto", sampling=None, verbose=False,
             ema_length=None, nearest=None):
    """KID and FID of `num_images` EMA samples (`diffusion_steps` steps of the sampler in `sampling`,
    `generate`'s sampler, spacing and options; default the model's, `ModelConfig.default_sampler`)
    against real images, in InceptionV3's features or (`features="cifar10"`, or "auto" without
    Inception weights) the CIFAR-10 classifier's, where they are named KD-cifar10 and FD-cifar10.

    Real images come from `data_dir` or the tfds `dataset` `split`. KID uses the first `kid_images`
    samples and a seeded subset of as many real images. The result is also saved as JSON next to the
    checkpoint; returns it as a dict.

    `ema_length`: sample with the post-hoc EMA of that relative length (`posthoc_ema`) instead of
    the EMA. `nearest` K: also the memorisation check (`memorization.check`) of the samples against
    the real images, K nearest of each in pixels and features, its picture saved beside the JSON.
    """
    if num_images < 2 or kid_images < 2:
        raise UsageError(f"KID and FID need at least 2 images, got {min(num_images, kid_images)}")
    checks.seed(seed)
    if nearest is not None:
        checks.positive_int(nearest, "nearest")
    if ema_length is not None:
        posthoc_ema.check_length(checkpoint, ema_length)
    model = runs.load_checkpoint(checkpoint)
    ema_updates = None if ema_length is None else posthoc_ema.use_length(model, checkpoint,
                                                                         ema_length)
    sampling = {"sampler": model.config.default_sampler, **(sampling or {})}
    options = {key: value for key, value in sampling.items() if key not in ("sampler", "spacing")}
    record = samplers.sampler_record(sampling["sampler"])
    record.bind(**options)
    model.config.check_sampling(sampling["sampler"], diffusion_steps,
                                sampling.get("spacing") or record.default_spacing, options)
    batch_size = batch_size or backend.default_sample_batch_size()
    if extractor is None:
        features, extractor = feature_extractor(features, model.config.channels,
                                                model.config.image_size, inception_weights,
                                                inception_size)
    elif features == "auto":
        features = "inception"
    source = ({"data_dir": os.path.abspath(data_dir)} if data_dir is not None
              else {"dataset": dataset, "split": split})

    def load_real_images():
        return open_images(model.config.image_size, dataset, data_dir, limit, seed,
                           model.config.channels, split=split)

    key = reference_key(source, model.config.image_size, model.config.channels, features,
                        inception_weights, inception_size, limit, kid_images)
    real, real_kid_features, cache_path, reused = reference_statistics(
        load_real_images, key, extractor, cache_dir or default_cache_dir("reference"), batch_size,
        seed)

    generated = metrics.FeatureStatistics()
    generated_kid_features, kept_images, kept_features = [], [], []
    progress = keras.utils.Progbar(num_images, unit_name="image") if verbose else None
    for start in range(0, num_images, batch_size):  # images first_image.. of the seed: any batch
        count = min(batch_size, num_images - start)
        images = model.generate(count, diffusion_steps, seed=seed, batch_size=batch_size,
                                first_image=start, verbose=False, **sampling)
        sample_features = extract_features(extractor, images, batch_size)
        generated.update(sample_features)
        if nearest is not None:  # as uint8: 10,000 CIFAR-sized samples are 30 MB
            kept_images.append((images * 255).round().astype("uint8"))
            kept_features.append(sample_features)
        generated_kid_features += list(sample_features[:kid_images - len(generated_kid_features)])
        if progress is not None:
            progress.update(start + count)
    kid_count = min(len(real_kid_features), len(generated_kid_features))
    kid = metrics.kernel_inception_distance(real_kid_features[:kid_count],
                                            np.stack(generated_kid_features[:kid_count]))
    kid_name, fid_name = METRIC_NAMES[features]
    result = {
        "checkpoint": os.path.abspath(checkpoint), kid_name: float(np.asarray(kid)),
        fid_name: metrics.fid(real, generated), "features": features, "num_images": num_images,
        "steps": diffusion_steps, **sampling, "network": "ema", "ema_length": ema_length,
        "ema_updates": ema_updates, **source,
        "num_real_images": real.count, "kid_images": kid_count, "seed": seed,
        "reference_cache": cache_path, "reference_reused": reused,
    }
    if features == "inception":
        result.update(inception_weights=key["inception_weights"], inception_size=inception_size)
    result["path"] = result_path(
        checkpoint, num_images, feature_space_name(features, inception_weights, inception_size),
        samplers.sampling_name(
            {"spacing": samplers.SAMPLERS[sampling["sampler"]].default_spacing, **sampling},
            diffusion_steps, seed), ema_length)
    if nearest is not None:
        result["nearest"] = nearest_images(np.concatenate(kept_images),
                                           np.concatenate(kept_features), load_real_images(),
                                           extractor, nearest, batch_size, result["path"])
    if distributed.is_writer():
        runs.write_json(result["path"], result)
    return result


def nearest_images(samples, sample_features, real_images, extractor, k, batch_size, result_path):
    """The memorisation check's summary, its picture drawn beside `result_path` (`_nearest.png`)."""
    real_features = extract_features(extractor, real_images, batch_size)
    check = memorization.check(samples, real_images, k, sample_features, real_features)
    picture = f"{os.path.splitext(result_path)[0]}_nearest{k}.png"
    if distributed.is_writer():
        plotting.plot_nearest_images(samples, real_images, check, picture)
    return {**check.summary(), "k": k, "picture": picture}

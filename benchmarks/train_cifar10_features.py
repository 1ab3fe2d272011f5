"""Train the CIFAR-10 classifier whose features give the offline quality measure (FD-cifar10).

    python benchmarks/train_cifar10_features.py --data-dir /tmp/cifar

reads `train/<class>/*` and `test/<class>/*` (the shared CIFAR-10 JPEGs), trains with random crops
(4-pixel padding) and flips, SGD with Nesterov momentum and a warm-up + cosine learning rate, then
writes the weights and a JSON of how they were made (test accuracy included) into the package.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

from diffusion_keras import runs
from diffusion_keras.cifar10_features import (
    CIFAR10_FEATURES_INFO,
    CIFAR10_FEATURES_WEIGHTS,
    CLASSES,
    IMAGE_SIZE,
    build_classifier,
)
from diffusion_keras.data import load_image_folder, preprocess


def load_split(data_dir, split):
    """(images float32 NHWC in [0, 1], integer labels) of one split, class folders in CLASSES order."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        folder = preprocess(load_image_folder(os.path.join(data_dir, split, name), IMAGE_SIZE,
                                              channels=3))
        images.append(folder)
        labels.append(np.full(len(folder), label))
    return np.concatenate(images), np.concatenate(labels)


def augment(images, rng, padding=4):
    """Random crops of the reflect-padded images and random horizontal flips (one epoch's worth)."""
    count, size = len(images), images.shape[1]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")
    rows = rng.integers(0, 2 * padding + 1, count)[:, None] + np.arange(size)
    cols = rng.integers(0, 2 * padding + 1, count)[:, None] + np.arange(size)
    flips = rng.random(count) < 0.5
    cols[flips] = cols[flips, ::-1]
    crops = np.take_along_axis(padded, rows[:, :, None, None], axis=1)
    return np.take_along_axis(crops, cols[:, None, :, None], axis=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding train/ and test/")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=CIFAR10_FEATURES_WEIGHTS, help="a .weights.h5 path")
    args = parser.parse_args(argv)
    if not args.output.endswith(".weights.h5"):
        parser.error("--output must end in .weights.h5")

    keras.utils.set_random_seed(args.seed)
    started = time.time()
    train_images, train_labels = load_split(args.data_dir, "train")
    test_images, test_labels = load_split(args.data_dir, "test")
    print(f"{len(train_images)} train, {len(test_images)} test images loaded in "
          f"{time.time() - started:.0f} s", flush=True)

    classifier = build_classifier()
    logits = keras.Model(classifier.inputs, classifier.outputs[1])
    steps = args.epochs * (len(train_images) // args.batch_size)
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0, steps - steps // 20, warmup_target=args.learning_rate, warmup_steps=steps // 20)
    logits.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                       weight_decay=args.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=["accuracy"])
    rng = np.random.default_rng(args.seed)
    one_hot_labels = keras.utils.to_categorical(train_labels, len(CLASSES))
    for epoch in range(args.epochs):
        epoch_started = time.time()
        history = logits.fit(augment(train_images, rng), one_hot_labels, batch_size=args.batch_size,
                             epochs=epoch + 1, initial_epoch=epoch, shuffle=True, verbose=0)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {history.history['loss'][-1]:.4f}, "
              f"train accuracy {history.history['accuracy'][-1]:.4f} "
              f"({time.time() - epoch_started:.0f} s)", flush=True)
    predictions = np.argmax(logits.predict(test_images, batch_size=500, verbose=0), axis=-1)
    accuracy = float(np.mean(predictions == test_labels))
    print(f"test accuracy {accuracy:.4f} on {len(test_images)} images", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    partial = args.output[: -len(".weights.h5")] + ".partial.weights.h5"  # Keras wants the suffix
    classifier.save_weights(partial)
    os.replace(partial, args.output)
    info = {"test_accuracy": accuracy, "test_images": len(test_images),
            "train_images": len(train_images), "epochs": args.epochs,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay, "seed": args.seed,
            "parameters": classifier.count_params(), "backend": keras.backend.backend(),
            "minutes": round((time.time() - started) / 60, 1),
            "command": "python benchmarks/train_cifar10_features.py " + " ".join(sys.argv[1:])}
    if os.path.abspath(args.output) == CIFAR10_FEATURES_WEIGHTS:
        runs.write_json(CIFAR10_FEATURES_INFO, info)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

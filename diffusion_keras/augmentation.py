"""EDM's non-leaky augmentation (Karras et al. 2022, appendix C.5): each training image is
transformed at random and the network is told how, by augmentation labels beside the noise level.
The network learns the transformed images as a distribution of their own, so they do not leak into
what it generates: sampling passes zero labels (no transform) and gets the untransformed images.
Small folders over-fit less this way (BENCHMARKS.md, "Training on your own images").

Each transform is applied with probability `probability`, independently per image: an x-flip, a
rotation by quarter turns, an integer translation (up to MAX_TRANSLATION of the side), an isotropic
and an anisotropic scaling (log2-normal), composed into one warp about the image centre, with the
border filled by reflection.
"""

from keras import ops, random

# the labels, in order: x-flip (0 or 1), rotation (cos - 1, sin), translation (x, y, as fractions of
# the side), log2 isotropic scale, log2 anisotropic scale; all zero for an untransformed image
AUGMENT_LABELS = 7
AUGMENT_EMBEDDING = "augment_embedding"  # the U-Net layer that reads them (zero-initialised)
MAX_TRANSLATION = 0.125  # EDM's translate_int
SCALE_STD = 0.2  # of log2 of the isotropic scale (EDM's scale_std)
ANISO_STD = 0.2  # of log2 of the anisotropic scale (EDM's aniso_std)
QUARTER_COS, QUARTER_SIN = (1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 0.0, -1.0)  # exact, not math.cos


def augment(images, probability, seed_generator):
    """(augmented images, their labels (batch, AUGMENT_LABELS)) for a float NHWC batch: each
    transform drawn for a `probability` share of the images, the identity (zero) for the rest."""
    batch = ops.shape(images)[0]

    def applied(values):
        chosen = random.uniform((batch,), seed=seed_generator) < probability
        return ops.where(chosen, values, ops.zeros_like(values))

    def uniform(low, high):
        return low + (high - low) * random.uniform((batch,), seed=seed_generator)

    flip = applied(ops.floor(uniform(0.0, 2.0)))
    turns = ops.cast(applied(ops.floor(uniform(0.0, 4.0))), "int32")
    side = images.shape[1]
    shifts = [applied(ops.round(uniform(-MAX_TRANSLATION, MAX_TRANSLATION) * side)) / side
              for _ in range(2)]
    log_scale = applied(random.normal((batch,), seed=seed_generator) * SCALE_STD)
    log_aniso = applied(random.normal((batch,), seed=seed_generator) * ANISO_STD)
    cos = ops.take(ops.convert_to_tensor(QUARTER_COS), turns)
    sin = ops.take(ops.convert_to_tensor(QUARTER_SIN), turns)
    labels = ops.stack([flip, cos - 1.0, sin, *shifts, log_scale, log_aniso], axis=1)
    return warp(images, labels), labels


def warp(images, labels):
    """The images transformed as their labels say: x-flipped, turned by (cos, sin), scaled, then
    shifted, about the centre (one bilinear warp; exact where the labels have no scaling)."""
    images, labels = ops.convert_to_tensor(images), ops.convert_to_tensor(labels, "float32")
    side = images.shape[1]
    flip, cos, sin, shift_x, shift_y, log_scale, log_aniso = ops.unstack(labels, axis=1)
    cos = cos + 1.0
    scale_x, scale_y = 2.0 ** (log_scale + log_aniso), 2.0 ** (log_scale - log_aniso)
    # input = centre + F R^T S^-1 (output - centre - shift), F = diag(1 - 2 flip, 1): the inverse
    # of shift(scale(rotate(flip))), as Keras' rows (x' = a0 x + a1 y + a2, y' = b0 x + b1 y + b2;
    # x the column, y the row)
    mirror = 1.0 - 2.0 * flip
    a0, a1 = mirror * cos / scale_x, mirror * sin / scale_y
    b0, b1 = -sin / scale_x, cos / scale_y
    centre = (side - 1) / 2.0
    from_x, from_y = -centre - shift_x * side, -centre - shift_y * side  # output pixel (0, 0)
    zeros = ops.zeros_like(a0)
    transforms = ops.stack([a0, a1, centre + a0 * from_x + a1 * from_y,
                            b0, b1, centre + b0 * from_x + b1 * from_y, zeros, zeros], axis=1)
    return ops.image.affine_transform(images, transforms, interpolation="bilinear",
                                      fill_mode="reflect")

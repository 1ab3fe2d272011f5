"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser, so every sampler guides unchanged.

A class-conditional network trained with label dropout predicts both with a class and with the
no-class token; guidance w extrapolates from the second towards the first: w = 0 is unconditional,
w = 1 plain conditional, w > 1 trades diversity for images more typical of the class.
"""


from keras import ops


def guided_denoiser(denoise, labels, guidance, null_label):
    """The samplers' `denoise(noisy_images, noise_rates, signal_rates) -> (pred_noises,
    pred_images)` guided towards `labels` (batch,) by `guidance` (a scalar, possibly a tensor).

    `denoise(..., labels=...)` is called once, on the batch concatenated with itself (with `labels`,
    then with `null_label`), as one network call; both predictions are affine in the network output,
    so combining them combines the outputs. Written w * cond + (1 - w) * uncond, which is exactly
    the conditional prediction at w = 1 and the unconditional one at w = 0.
    """
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    both_labels = ops.concatenate([labels, ops.full_like(labels, null_label)])
    guidance = ops.cast(guidance, "float32")

    def guided(noisy_images, noise_rates, signal_rates):
        count = ops.shape(noisy_images)[0]
        doubled = [ops.concatenate([value, value]) for value in
                   (noisy_images, noise_rates, signal_rates)]
        return tuple(guidance * prediction[:count] + (1.0 - guidance) * prediction[count:]
                     for prediction in denoise(*doubled, labels=both_labels))

    return guided

"""Fine-tuning (`train.py --init-from CHECKPOINT`, EDM's `--transfer`): a new run that starts from a
trained model's weights instead of random ones, on new images, with its own run folder.

The network and its EMA copy both start from the checkpoint's EMA weights (the better of its two
networks); the optimizer, the EMA warm-up and the step count start afresh, and the normaliser is
adapted to the new images, so the network sees the new data standardised as it saw the old.
"""

from diffusion_keras import runs
from diffusion_keras.augmentation import AUGMENT_EMBEDDING
from diffusion_keras.errors import UsageError

# what fixes the weights' shapes: a fine-tuned model must have the checkpoint's (its augmentation
# input alone may be added: it starts at zero, so the network starts as the checkpoint's)
ARCHITECTURE = ("image_size", "channels", "widths", "block_depth", "embedding_dims",
                "attention_resolutions", "norm", "embedding")


def check_architecture(config, saved, checkpoint):
    """One line where a new model of `config` cannot start from `saved`, a checkpoint's config."""
    if saved.distillation is not None:
        raise UsageError(f"{checkpoint!r} is a distilled student; --init-from starts from a model "
                         "train.py made")
    differences = [f"{name}: the checkpoint has {getattr(saved, name)!r}, this run "
                   f"{getattr(config, name)!r}" for name in ARCHITECTURE
                   if getattr(saved, name) != getattr(config, name)]
    if len(saved.class_names) != len(config.class_names):
        differences.append(f"classes: the checkpoint has {len(saved.class_names)}, this run "
                           f"{len(config.class_names)}")
    if saved.augment and not config.augment:
        differences.append("augment: the checkpoint was trained with --augment, this run without")
    if differences:
        raise UsageError(f"--init-from {checkpoint} needs the checkpoint's architecture "
                         f"({'; '.join(differences)}); match it (train.py takes it from the "
                         "checkpoint unless a flag changes it) or train from scratch")


def initial_weights(model, checkpoint):
    """Set both of `model`'s networks to the EMA weights of the model saved at `checkpoint` (its
    architecture checked by `check_architecture`); an augmentation input the checkpoint lacks
    keeps its zero start."""
    source = runs.load_checkpoint(checkpoint)
    weights = source.ema_network.get_weights()
    added = bool(model.config.augment) and not source.config.augment
    for network in (model.network, model.ema_network):
        kept = [weight for weight in network.weights
                if not (added and AUGMENT_EMBEDDING in weight.path)]
        for weight, value in zip(kept, weights, strict=True):
            weight.assign(value)

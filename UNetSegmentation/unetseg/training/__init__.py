"""Training: datasets, fingerprint and plan, patch sampling, augmentation, the trainer and its checkpoints."""

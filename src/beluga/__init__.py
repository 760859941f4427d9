"""beluga: a reproducible, fast CIFAR-10 training pipeline built on DVC."""

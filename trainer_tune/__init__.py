"""trainer_tune: find the fastest stable way to train a PyTorch model on your machines."""

__version__ = "0.1.0"

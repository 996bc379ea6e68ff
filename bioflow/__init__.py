"""bioflow: from a folder of images to a trained model, predictions, metrics and a report."""

__version__ = "0.1.0"

"""Training: the shared Lightning engine, losses, optimizers / schedules, augmentation, charts.

Import the submodules (``bioflow.training.engine`` ...) directly; this package stays light so
importing it does not pull in Lightning.
"""

"""Training: the shared Lightning engine, losses, optimizers / schedules, charts, and the train
stage of each workflow (augmentation is ``bioflow.data.augment``).

Import the submodules (``bioflow.training.engine`` ...) directly; this package stays light so
importing it does not pull in Lightning.
"""

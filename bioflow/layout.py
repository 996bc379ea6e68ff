"""Where every file of an experiment lives (BiaPy's layout), in one place for the rules and
the stages: ``<result_dir>/<name>/{config_files,prepared,checkpoints,results/<name>_<run_id>,...}``.

Bottom layer: pure path arithmetic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

# The pseudo run_id of the ensemble of an experiment's run_ids (its results folder is
# results/<name>_ensemble, beside the runs').
ENSEMBLE = "ensemble"
# cross-validation, in a fold's run folder: its model's predictions of its held-out fold
OOF_PREDICTIONS = "oof_predictions.csv"


@dataclass(frozen=True)
class Layout:
    result_dir: str
    name: str

    @classmethod
    def of(cls, cfg) -> "Layout":
        return cls(str(cfg["experiment"]["result_dir"]), str(cfg["experiment"]["name"]))

    @property
    def root(self) -> str:
        return f"{self.result_dir}/{self.name}"

    @property
    def prepared(self) -> str:
        return f"{self.root}/prepared"

    @property
    def folders(self) -> str:
        """csv_to_folders output: class folders per split."""
        return f"{self.prepared}/folders"

    @property
    def manifest_train(self) -> str:
        return f"{self.prepared}/manifest_train.json"

    @property
    def manifest_test(self) -> str:
        return f"{self.prepared}/manifest_test.json"

    @property
    def norm_json(self) -> str:
        return f"{self.prepared}/normalization.json"

    @property
    def patches(self) -> str:
        return f"{self.prepared}/patches"

    @property
    def config_copy(self) -> str:
        return f"{self.root}/config_files/config.yaml"

    @property
    def report(self) -> str:
        return f"{self.root}/report.html"

    @property
    def logs(self) -> str:
        return f"{self.root}/logs"

    def run_dir(self, run_id) -> str:
        return f"{self.root}/results/{self.name}_{run_id}"

    @property
    def ensemble_dir(self) -> str:
        """The ensemble's results (predictions averaged over the run_ids, its metrics)."""
        return self.run_dir(ENSEMBLE)

    def export_dir(self, run_id) -> str:
        return f"{self.root}/export/{self.name}_{run_id}"

    def best_ckpt(self, run_id) -> str:
        return f"{self.root}/checkpoints/{self.name}_{run_id}-best.ckpt"

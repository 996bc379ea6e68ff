"""Image classification: class-per-folder images (or a CSV / MedMNIST .npz turned into
folders), 2D and 3D, multi-class, binary and multi-label, optional tabular metadata.

Layout: ``<split>/<class>/<image>`` (sorted folder names = classes); an unlabelled test set
(``data.test_has_labels: false``) holds images directly or in any sub-folders; multi-label
(``model.multilabel``): images anywhere under ``<split>/`` plus ``data.labels_csv`` (a file
column and one 0/1 column per label; the label columns are the classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from bioflow.data import validate
from bioflow.layout import OOF_PREDICTIONS
from bioflow.stage import Job, StageConfig
from bioflow.workflows.base import Workflow, stage

# What the model is built from: architecture and its arguments, input geometry, classes.
MODEL_KEYS = ("experiment.workflow", "experiment.ndim", "data.channels", "data.patch_size", "model")
# How training reads the images (resize / normalization) and trains.
# data.cv_folds: which images a fold trains on (also in the resume hash: another k, another fold)
TRAIN_KEYS = MODEL_KEYS + ("data.resize", "data.normalization", "data.metadata_csv", "data.cv_folds", "train")
RUNTIME_TRAIN_KEYS = ("train.num_workers", "train.n_sample_images", "inference.batch_size")


class Classification(Workflow):
    name = "classification"
    multilabel = True
    reads_csv = True
    thresholds = True
    ensemble_predicts = False  # predictions.csv holds every probability: averaged, no forward pass
    extra_keys: ClassVar[dict] = {
        "validate_train": ("model.multilabel", "data.labels_csv", "data.metadata_csv", "data.csv_options"),
        "validate_test": ("model.multilabel", "data.labels_csv", "data.metadata_csv", "data.csv_options"),
        "report": ("model.multilabel", "metrics.bootstrap"),  # the pooled out-of-fold metrics
    }

    def runs(self, stage_name: str, cfg: dict) -> bool:
        if stage_name == "csv_to_folders":
            return bool(cfg["data"]["csv"])
        return super().runs(stage_name, cfg)

    def has_test(self, cfg: dict) -> bool:
        # with data.csv the CSV's test rows make the test set
        return bool(cfg["data"]["test"] or cfg["data"]["csv"])

    def outputs(self, stage_name: str, cfg: dict) -> dict[str, str]:
        if stage_name == "train" and cfg["data"]["cv_folds"]:
            return {"oof": OOF_PREDICTIONS}
        if stage_name == "metrics" and cfg["data"]["test_has_labels"]:
            out = {"csv": "metrics.csv", "mistakes_dir": "mistakes"}
            return out if cfg["model"]["multilabel"] else {**out, "confusion": "confusion_matrix.png"}
        return {}

    def stratify(self, cfg) -> bool:
        return not cfg["model"]["multilabel"]

    def check_config(self, cfg: dict) -> list[str]:
        problems = super().check_config(cfg)
        if cfg["model"]["multilabel"] and not cfg["data"]["labels_csv"]:
            problems.append("model.multilabel: true needs data.labels_csv (one 0/1 column per label)")
        if not cfg["model"]["multilabel"] and cfg["model"]["n_classes"] < 2:
            problems.append("model.n_classes: single-label classification needs at least 2 classes")
        thr = cfg["inference"]["threshold"]
        if thr not in ("argmax", "auto") and not cfg["model"]["multilabel"] and cfg["model"]["n_classes"] > 2:
            problems.append(f"inference.threshold: {thr} is for binary and multi-label models; with "
                            f"model.n_classes {cfg['model']['n_classes']} set inference.threshold: argmax")
        return problems

    def report_sections(self, cfg, run_dirs):
        """The thresholded decision beside argmax, the most confident mistakes per class, and for
        cross-validation the folds' held-out predictions pooled (out-of-fold metrics)."""
        from bioflow.report import review  # not needed for `snakemake -n`
        sections = review.threshold_section(run_dirs) + review.mistakes_section(run_dirs)
        csvs = [d / OOF_PREDICTIONS for d in run_dirs if (d / OOF_PREDICTIONS).is_file()]
        if not csvs:
            return sections
        import pandas as pd  # not needed for `snakemake -n`
        from bioflow.metrics.classification import out_of_fold
        from bioflow.report import table
        names = [c[len("prob_"):] for c in pd.read_csv(csvs[0], nrows=0).columns if c.startswith("prob_")]
        m = out_of_fold(csvs, names, bool(cfg["model"]["multilabel"]), int(cfg["metrics"]["bootstrap"]))
        keys = [k for k in ("accuracy", "balanced_accuracy", "f1_macro", "auc") if m.get(k) is not None]
        rows = [[k, f"{m[k]:.4f}", "" if k not in m["ci95"] else "[{:.4f}, {:.4f}]".format(*m["ci95"][k])]
                for k in keys]
        return sections + [f"<h2>Cross-validation: pooled out-of-fold metrics</h2><p>{m['n_samples']} train + val "
                           f"images, each predicted by the fold model that did not train on it (folds {m['folds']}).</p>"
                           + table(["metric", "value", "95% CI"], rows)]

    # --- layout ----------------------------------------------------------------------------

    def classes(self, cfg, train_root):
        if cfg["model"]["multilabel"]:
            return validate.multilabel_classes(validate.Checker(cfg), cfg)
        return [d.name for d in validate.class_folders(train_root)] if train_root else []

    def scan(self, ck, cfg, roots, classes):
        multilabel = bool(cfg["model"]["multilabel"])
        labelled = {s: (s != "test" or ck.test_has_labels) for s in roots}
        per_split = {s: ck.scan_classes(s, r, flat=multilabel or not labelled[s]) for s, r in roots.items()}
        if classes is None:  # scanning the training part: its folders are the classes
            if multilabel:
                classes = validate.multilabel_classes(ck, cfg)
            elif "train" in per_split:
                classes = sorted(per_split["train"])
                if len(classes) != ck.n_classes and classes:
                    ck.problem(f"{roots['train']}: {len(classes)} class folders ({', '.join(classes)}) but "
                               f"model.n_classes is {ck.n_classes}; set model.n_classes: {len(classes)} "
                               f"or fix the folders")
            classes = classes or []
        for split, per_class in per_split.items():
            for cls in per_class:
                if cls is not None and classes and cls not in classes and split != "train":
                    ck.problem(f"{roots[split] / cls}: class '{cls}' of the {split} set is not among the "
                               f"train classes {classes}; rename or remove the folder")
        splits = {}
        for split, per_class in per_split.items():
            items = [(p, cls) for cls, ps in per_class.items() for p in ps]
            found = ck.run_parallel(ck.check_image, [p for p, _ in items])
            splits[split] = validate.label_entries(found, [cls for _, cls in items], classes)
        extra = {"multilabel": multilabel}
        if multilabel:
            validate.attach_csv(ck, cfg, splits, roots, "labels")
        if cfg["data"]["metadata_csv"]:
            extra["metadata_columns"] = validate.attach_csv(ck, cfg, splits, roots, "metadata")
        return classes, splits, extra

    # --- stages ----------------------------------------------------------------------------

    @stage("experiment.ndim", "data.csv", "data.csv_options")
    def csv_to_folders(self, cfg: StageConfig, job: Job):
        from bioflow.prepare import csv_to_folders  # pandas / image writers: not needed for -n
        return csv_to_folders.run(cfg, job.output["folders_dir"])

    @stage(*TRAIN_KEYS, runtime=RUNTIME_TRAIN_KEYS)
    def train(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.training import classification  # torch: kept out of `snakemake -n`
        return classification.train(cfg, job.run_id, job.input["manifest"], job.input["norm"],
                                    job.output["ckpt"], job.params["run_dir"])

    @stage("inference", runtime=("train.num_workers",))
    def predict(self, cfg: StageConfig, job: Job) -> Path:
        from bioflow.inference import classification  # torch: kept out of `snakemake -n`
        return classification.predict(cfg, job.run_id, job.input["ckpt"], job.input["manifest"],
                                      job.params["run_dir"], job.params.get("shard"))

    @stage("model.multilabel", "inference.binarize_threshold")
    def ensemble(self, cfg: StageConfig, job: Job) -> Path:
        """The runs' test probabilities averaged (their predictions.csv) into the ensemble's."""
        from bioflow.inference import ensemble  # pandas: kept out of `snakemake -n`
        return ensemble.average_predictions(cfg, job.input["predictions"], job.input["manifest"],
                                            job.params["run_dir"])

    @stage("data.test_has_labels", "model.multilabel", "metrics")
    def metrics(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.metrics import classification  # matplotlib: kept out of `snakemake -n`
        return classification.evaluate(cfg, job.run_id, job.input["manifest"],
                                         Path(job.input["predictions"]).parent)

"""Patch classification: images + defect masks cut into a labelled patch dataset.

Status: the patch-dataset stage runs; the frozen backbone + scikit-learn head and the mask
reconstruction are not implemented yet, so the DAG ends at ``prepared/patches/info.json``.

Two layouts (``patch_layout`` in the manifest): ``"masks"``: ``<split>/x/`` + ``<split>/y/``
as in segmentation, masks holding defect class ids (0 = free; ``data.mask_transform``
applies); ``"class_folders"``: class folders as in classification, each image with a binary
defect mask, either ``<class>/x/`` + ``<class>/y/`` or side by side as ``<name>.<ext>`` +
``<name>.png`` (the Magnetic-tile layout: JPG image, PNG mask) or ``<name>_mask.<ext>``.
"""

from __future__ import annotations

from typing import ClassVar

from bioflow.data import validate
from bioflow.layout import Layout
from bioflow.prepare.patches import patch_classes
from bioflow.stage import Job, StageConfig
from bioflow.workflows.base import Workflow, stage


class PatchClassification(Workflow):
    name = "patch_classification"
    layout_hint = "image folders with defect masks"
    extra_keys: ClassVar[dict] = {
        "validate_train": ("data.mask_transform",),
        "validate_test": ("data.mask_transform", "model.n_classes"),
    }

    def runs(self, stage_name: str, cfg: dict) -> bool:
        return stage_name in ("validate_train", "validate_test", "patch_dataset", "save_config") and (
            stage_name != "validate_test" or self.has_test(cfg))

    def targets(self, cfg: dict, layout: Layout) -> list[str]:
        return [f"{layout.patches}/info.json", layout.config_copy]

    def classes(self, cfg, train_root):
        if train_root is None or (train_root / "x").is_dir():
            return super().classes(cfg, train_root)
        return [d.name for d in validate.class_folders(train_root)]

    def check_model(self, ck, cfg) -> None:
        """The backbone is not built by this workflow yet (see the module docstring)."""

    def scan(self, ck, cfg, roots, classes):
        train_root = roots.get("train")
        by_mask = (train_root / "x").is_dir() if train_root else any((r / "x").is_dir() for r in roots.values())
        ck.mask_classes = by_mask
        layout = "masks" if by_mask else "class_folders"
        if by_mask:
            ck.mask_transform = cfg["data"]["mask_transform"]
            splits = {split: validate.scan_pairs(ck, split, root) for split, root in roots.items()}
            return [str(i) for i in range(ck.n_classes)], splits, {"patch_layout": layout}
        labelled = {s: (s != "test" or ck.test_has_labels) for s in roots}
        per_split = {s: ck.scan_classes(s, r, flat=not labelled[s]) for s, r in roots.items()}
        if classes is None:
            classes = sorted(per_split.get("train", {}))
            # patches of a defect class too little covered go to the free class
            n_found = len(patch_classes(classes)[0])
            if classes and n_found != ck.n_classes:
                extra_free = " + the added 'free' class" if n_found > len(classes) else ""
                ck.problem(f"{train_root}: {len(classes)} class folders ({', '.join(classes)}){extra_free} "
                           f"but model.n_classes is {ck.n_classes}; set model.n_classes: {n_found} or "
                           f"fix the folders")
        splits = {split: validate.scan_class_pairs(ck, split, per_class, classes, labelled[split])
                  for split, per_class in per_split.items()}
        return classes, splits, {"patch_layout": layout}

    def stage_io(self, stage_name, cfg, lay, run_id):
        if stage_name == "patch_dataset":
            test = {"test_manifest": lay.manifest_test} if self.runs("validate_test", cfg) else {}
            return ({"manifest": lay.manifest_train, **test}, {"info": f"{lay.patches}/info.json"},
                    {"out_dir": lay.patches})
        return super().stage_io(stage_name, cfg, lay, run_id)

    @stage("patches", "experiment.ndim", "data.channels", "data.channel_axis", "data.mask_transform")
    def patch_dataset(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.prepare import patches  # h5py: kept out of `snakemake -n`
        return patches.run(cfg, job.input["manifest"], job.params["out_dir"], job.input.get("test_manifest"))

"""Patch classification (quadra's sklearn patch classification), 2D: images + defect masks ->
patch dataset -> frozen backbone features -> scikit-learn head -> patch predictions rebuilt
into defect masks.

Layouts of a data folder (``patch_layout`` in the manifest):

* ``"images_masks"`` (quadra): ``images/`` + ``masks/``, the mask of ``images/a.png`` being
  ``masks/a<patches.mask_extension>.*``; an image without a mask is wholly good;
* ``"masks"``: ``x/`` + ``y/`` as in segmentation;
* ``"class_folders"``: one folder per class, each image with a binary defect mask
  (``<class>/x/`` + ``<class>/y/``, or side by side: ``a.jpg`` + ``a.png`` as in the
  Magnetic-tile set, or ``a.tif`` + ``a_mask.tif``); the good class is the folder named
  ``*free*`` / ``*good*`` (else an added ``good`` class), index 0.

Masks of the first two hold class ids (0 = good), named by ``patches.class_to_idx``.

Stages after validation: ``patch_dataset`` (quadra's layout, ``prepared/patches``),
``patch_features`` (per run: the frozen backbone's features of the training samples drawn
from the h5 files and of every val / test grid patch, cached; the backbone as TorchScript),
``patch_head`` (the scikit-learn head fitted on the cached features; the deployment folder),
``predict``, ``metrics`` (patch metrics, per-image reconstruction), ``report``. A head change
reruns patch_head onward only. ``patches.deployment`` makes a predict-only run: no training
stages, the test patches go through the named deployment folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from bioflow.data import validate
from bioflow.errors import BioflowError
from bioflow.layout import Layout
from bioflow.prepare.patches import folder_classes
from bioflow.stage import Job, StageConfig
from bioflow.workflows.base import Workflow, stage

INPUT_KEYS = ("data.mask_transform", "patches.mask_extension", "patches.class_to_idx", "patches.val_size",
              "patches.test_size", "patches.seed")
GENERATION_KEYS = ("experiment.ndim", "data.channels", "data.channel_axis", "patches.patch_size",
                   "patches.patch_number", "patches.overlap", "patches.area_threshold",
                   "patches.area_defect_threshold", "patches.repeat_good_images", "patches.balance_defects",
                   "patches.annotated_good", "patches.save_original_images_and_masks",
                   "patches.classification_folders")
# what the features depend on: the backbone and its weights, its input, the training samples
FEATURE_KEYS = ("model", "data.channels", "data.normalization", "patches.iteration_over_training",
                "patches.balance_classes", "patches.class_to_skip_training", "patches.include_filter",
                "patches.exclude_filter", "patches.input_size", "patches.feature_stages")
HEAD_KEYS = ("patches.classifier", "patches.classifier_kwargs", "patches.standardize",
             "patches.cross_validation")
BATCH_KEYS = ("patches.batch_size", "patches.automatic_batch_size")
LAYOUTS = ("images_masks", "masks", "class_folders")


def layout_of(root: Path | None) -> str:
    if root is not None and (root / "images").is_dir():
        return "images_masks"
    if root is not None and (root / "x").is_dir():
        return "masks"
    return "class_folders"


class PatchClassification(Workflow):
    name = "patch_classification"
    layout_hint = "images/ + masks/, x/ + y/, or class folders with defect masks"
    # patches.patch_size: images smaller than a patch are padded (named by validation)
    extra_keys: ClassVar[dict] = {"validate_train": INPUT_KEYS + ("patches.patch_size",),
                                  "validate_test": INPUT_KEYS + ("patches.patch_size",)}

    # --- DAG -------------------------------------------------------------------------------

    @staticmethod
    def predict_only(cfg: dict) -> bool:
        return bool(cfg["patches"]["deployment"])

    def has_test(self, cfg: dict) -> bool:
        return bool(cfg["data"]["test"] or cfg["patches"]["test_size"] > 0)

    def runs(self, stage_name: str, cfg: dict) -> bool:
        if stage_name in ("validate_train", "norm_stats", "patch_features", "patch_head"):
            return not self.predict_only(cfg)
        if stage_name == "train":
            return False  # the head is fitted by patch_head
        return super().runs(stage_name, cfg)

    def targets(self, cfg: dict, layout: Layout) -> list[str]:
        if not self.has_test(cfg):
            return [f"{layout.run_dir(r)}/deployment/model.json" for r in cfg["experiment"]["run_ids"]] + \
                [layout.config_copy]
        return [layout.report, layout.config_copy]

    def outputs(self, stage_name: str, cfg: dict) -> dict[str, str]:
        if stage_name == "metrics" and cfg["data"]["test_has_labels"]:
            return {"reconstruction": "reconstruction_results.json", "csv": "metrics.csv",
                    "confusion": "confusion_matrix.png", "overlays_dir": "overlays"}
        return {}

    def job(self, stage_name, cfg, run_id=None, shard=None):
        job = super().job(stage_name, cfg, run_id, shard)
        lay = Layout.of(cfg)
        info = f"{lay.patches}/info.json"
        rd = lay.run_dir(run_id) if run_id is not None else None
        if stage_name == "predict":
            own = {"deployment": f"{rd}/deployment", "features": f"{rd}/features.h5"}
            job.input = {"info": info, **({"deployment": cfg["patches"]["deployment"]}
                                          if self.predict_only(cfg) else own)}
        elif stage_name == "metrics":
            job.input = {"info": info, "predictions": f"{rd}/predictions.csv"}
        return job

    def stage_io(self, stage_name, cfg, lay, run_id):
        rd = lay.run_dir(run_id) if run_id is not None else None
        info = f"{lay.patches}/info.json"
        if stage_name == "patch_dataset":
            parts = {"manifest": lay.manifest_train} if self.runs("validate_train", cfg) else {}
            if self.runs("validate_test", cfg):
                parts["test_manifest"] = lay.manifest_test
            return parts, {"info": info}, {"out_dir": lay.patches}
        if stage_name == "patch_features":
            return ({"info": info, "norm": lay.norm_json},
                    {"features": f"{rd}/features.h5", "backbone": f"{rd}/backbone.pt"}, {})
        if stage_name == "patch_head":
            return ({"features": f"{rd}/features.h5", "backbone": f"{rd}/backbone.pt"},
                    {"deployment_dir": f"{rd}/deployment", "summary": f"{rd}/train_summary.json"}, {})
        return super().stage_io(stage_name, cfg, lay, run_id)

    def min_size(self, cfg):
        size = cfg["patches"]["patch_size"]  # null with patches.patch_number: sizes follow the image
        return tuple(size) if size is not None else None

    def check_model(self, ck, cfg) -> None:
        """The backbone is a 2D classification model (registry or timm name) or raw_pixels."""
        from bioflow.models.registry import check_architecture  # torch: kept out of `snakemake -n`
        if cfg["model"]["architecture"] == "raw_pixels":
            return
        try:
            check_architecture({"experiment": {"workflow": "classification", "ndim": 2},
                                "model": {"architecture": cfg["model"]["architecture"],
                                          "weights": cfg["model"]["weights"]}})
        except BioflowError as exc:
            ck.problem(str(exc))

    def check_config(self, cfg: dict) -> list[str]:
        problems = super().check_config(cfg)
        p = cfg["patches"]
        if cfg["experiment"]["ndim"] != 2:
            problems.append("experiment.ndim: patch classification is 2D (quadra's workflow); set ndim: 2")
        if (p["patch_size"] is None) == (p["patch_number"] is None):
            problems.append("patches.patch_size / patches.patch_number: give exactly one (the other null)")
        if p["patch_number"] is not None and p["input_size"] is None:
            problems.append("patches.input_size: needed with patches.patch_number (patch sizes vary per image)")
        if p["val_size"] + p["test_size"] >= 1:
            problems.append("patches.val_size + patches.test_size: must stay below 1 (training needs images)")
        c2i = p["class_to_idx"]
        if c2i is not None:
            if sorted(c2i.values()) != list(range(len(c2i))):
                problems.append(f"patches.class_to_idx: values must be 0..{len(c2i) - 1}, each once "
                                f"(0 = good), got {sorted(c2i.values())}")
            elif len(c2i) != cfg["model"]["n_classes"]:
                problems.append(f"model.n_classes: {cfg['model']['n_classes']} but patches.class_to_idx names "
                                f"{len(c2i)} classes; set model.n_classes: {len(c2i)}")
        names = set(c2i or {})
        for key in ("annotated_good", "class_priority", "class_to_skip_training"):
            unknown = [c for c in (p[key] or []) if names and c not in names]
            if unknown:
                problems.append(f"patches.{key}: {unknown} not among patches.class_to_idx {sorted(names)}")
        if self.predict_only(cfg) and not self.has_test(cfg):
            problems.append("patches.deployment: a predict-only run needs data.test")
        return problems

    # --- layout ------------------------------------------------------------------------------

    def classes(self, cfg, train_root):
        c2i = cfg["patches"]["class_to_idx"]
        if c2i is not None:
            return sorted(c2i, key=c2i.get)
        if layout_of(train_root) == "class_folders" and train_root is not None:
            return folder_classes([d.name for d in validate.class_folders(train_root)])
        return [str(i) for i in range(int(cfg["model"]["n_classes"]))]

    def scan(self, ck, cfg, roots, classes):
        p = cfg["patches"]
        part_test = "train" not in roots
        if part_test and not cfg["data"]["test"] and cfg["data"]["train"]:
            # the test set is held out of data.train (patches.test_size)
            src = {"train": Path(cfg["data"]["train"])}
            if src["train"].is_dir():
                classes, splits, extra = self._scan(ck, cfg, src, classes)
                _, _, test = self._split(cfg, splits["train"])
                return classes, {"test": test}, {**extra, "test_source": "test_size"}
            return classes, {}, {"patch_layout": "class_folders"}
        classes, splits, extra = self._scan(ck, cfg, roots, classes)
        if not part_test and "val" not in roots:
            train, val, _ = self._split(cfg, splits.get("train", []))
            splits.update(train=train, val=val)
        extra["split"] = {"val_size": p["val_size"], "test_size": p["test_size"], "seed": p["seed"]}
        return classes, splits, extra

    def _split(self, cfg, entries):
        p = cfg["patches"]
        binary = cfg["data"]["mask_transform"] != "none"  # instance ids are not classes
        strata = [[1] if binary and _stratum(e) != [0] else _stratum(e) for e in entries]
        # the rarest class an image holds (images with several defects stratify by it)
        freq = {}
        for s in strata:
            for c in s:
                freq[c] = freq.get(c, 0) + 1
        labels = [min(s, key=lambda c: (freq[c], c)) for s in strata]
        return validate.split_fractions(entries, labels, p["val_size"], p["test_size"], p["seed"])

    def _scan(self, ck, cfg, roots, classes):
        first = roots.get("train") or next(iter(roots.values()), None)
        layout = layout_of(first)
        extra = {"patch_layout": layout}
        if layout != "class_folders":
            ck.mask_classes = True
            ck.mask_transform = cfg["data"]["mask_transform"]
            if classes is None:
                classes = self.classes(cfg, None)
            ck.n_classes = len(classes)
            if layout == "images_masks":
                splits = {s: validate.scan_images_masks(ck, s, r, cfg["patches"]["mask_extension"])
                          for s, r in roots.items()}
            else:
                splits = {s: validate.scan_pairs(ck, s, r) for s, r in roots.items()}
            for es in splits.values():
                for e in es:
                    e["label"], e["class_name"] = None, None
            return classes, splits, extra
        labelled = {s: (s != "test" or ck.test_has_labels) for s in roots}
        per_split = {s: ck.scan_classes(s, r, flat=not labelled[s]) for s, r in roots.items()}
        if classes is None:
            classes = folder_classes(sorted(per_split.get("train", {}))) if per_split.get("train") else []
        if classes and len(classes) != ck.n_classes:
            ck.problem(f"{first}: {len(classes)} classes ({', '.join(classes)}, the good one first) but "
                       f"model.n_classes is {ck.n_classes}; set model.n_classes: {len(classes)}")
        for split, per_class in per_split.items():
            for cls in per_class:
                if cls is not None and classes and cls not in classes:
                    ck.problem(f"{roots[split] / cls}: class '{cls}' is not among the train classes "
                               f"{classes}; rename or remove the folder")
        splits = {split: validate.scan_class_pairs(ck, split, per_class, classes, labelled[split])
                  for split, per_class in per_split.items()}
        return classes, splits, extra

    # --- stages --------------------------------------------------------------------------------

    @stage(*GENERATION_KEYS, "data.test_has_labels", runtime=("patches.num_workers",))
    def patch_dataset(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.prepare import patches  # h5py / scikit-image: kept out of `snakemake -n`
        return patches.run(cfg, job.input.get("manifest"), job.params["out_dir"], job.input.get("test_manifest"),
                           num_workers=int(cfg["patches"]["num_workers"]))

    @stage(*FEATURE_KEYS, runtime=BATCH_KEYS)
    def patch_features(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.models import patch_features  # torch: kept out of `snakemake -n`
        return patch_features.run(cfg, job.run_id, job.input["info"], job.input["norm"], job.output["features"],
                                  job.output["backbone"])

    @stage(*HEAD_KEYS)
    def patch_head(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.training import patch_head  # scikit-learn / torch: kept out of `snakemake -n`
        return patch_head.run(cfg, job.run_id, job.input["features"], job.input["backbone"],
                              job.output["deployment_dir"], job.output["summary"])

    @stage("patches.deployment", runtime=BATCH_KEYS)
    def predict(self, cfg: StageConfig, job: Job) -> Path:
        from bioflow.inference import patch  # torch / joblib: kept out of `snakemake -n`
        return patch.predict(cfg, job.input["info"], job.input["deployment"], job.input.get("features"),
                             job.output["csv"])

    @stage("data.test_has_labels", "patches.reconstruction", "patches.class_priority", "patches.annotated_good",
           "metrics")
    def metrics(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.metrics import patch  # matplotlib / scikit-image: kept out of `snakemake -n`
        return patch.evaluate(cfg, job.input["info"], job.input["predictions"], Path(job.output["json"]).parent)

    def report_sections(self, cfg, run_dirs: list[Path]) -> list[str]:
        from bioflow.metrics.patch import report_section  # scikit-image: kept out of `snakemake -n`
        return [report_section(Path(d), int(cfg["report"]["max_charts"])) for d in run_dirs]


def _stratum(entry: dict) -> list[int]:
    """The classes an image holds (0 alone for a good image)."""
    if entry.get("label") is not None:
        return [int(entry["label"])]
    values = [v for v in entry.get("mask_values") or [0] if v]
    return values or [0]

"""The experiment config as pydantic models: the one place where keys, types, ranges, enums,
defaults and descriptions are written.

``bioflow.config.validate`` validates a config dict with :class:`Config` and fills the defaults;
``python -m bioflow.config --write-schema`` writes the JSON schema generated from these models to
``bioflow/schemas/`` and ``workflow/schemas/`` (a test checks the committed files match).

Conventions: every model forbids unknown keys; values are strict (no "yes" for a bool, no "3" for
an int: the command-line strings of ``snakemake --config`` are coerced in bioflow.config before
validation); enums are ``Literal`` so the validated config holds plain values; a number key keeps
an integer the user wrote as an integer (``max_time_minutes: 30`` stays 30, so the params
Snakemake records do not change).
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WrapValidator, field_validator

Workflow = Literal["classification", "semantic_segmentation", "patch_classification"]


def _keep_int(value, handler):
    out = handler(value)
    return value if type(value) is int else out


def Num(**constraints):
    """A JSON-schema ``number`` with ``constraints`` (ge/gt/le/lt); an int input stays an int."""
    return Annotated[float, Field(**constraints), WrapValidator(_keep_int)]


def Int(**constraints):
    return Annotated[int, Field(**constraints)]


def section(model: type[BaseModel], description: str | None = None):
    """A config section with defaults for every key: optional, ``{}`` when absent."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Experiment(_Section):
    """experiment: what to run and where its outputs go."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="output folder name: letters, digits, _")
    workflow: Workflow
    ndim: Literal[2, 3] = 2
    run_ids: list[Int(ge=0)] = Field([1], min_length=1, json_schema_extra={"uniqueItems": True})
    result_dir: str = "results"
    split_seed: Int(ge=0) = Field(0, description="seed of the train/val split (shared by all run_ids)")

    @field_validator("run_ids")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("run ids must be unique; give each run_id once")
        return v


class CsvOptions(_Section):
    """data.csv_options: columns of data.csv."""

    file_column: str = "file"
    label_column: str = "label"
    split_column: str | None = "split"
    image_root: str | None = Field(None, description="folder the file column is relative to (default: the CSV's folder)")
    class_names: list[str] | None = Field(None, description=".npz: names of label indices")


class Normalization(_Section):
    """data.normalization: intensity normalization of every image."""

    type: Literal["zscore", "percentile", "scale_range", "none"] = "zscore"
    per_image: bool = Field(False, description="statistics per image instead of the train-set statistics")
    percentiles: list[Num(ge=0, le=100)] = Field([1.0, 99.8], min_length=2, max_length=2)


class Sampling(_Section):
    """data.sampling: how training patches are drawn (segmentation)."""

    foreground_bias: Num(ge=0, le=1) = Field(0.0, description="segmentation: fraction of patches centred on foreground")
    save_probability_maps: bool = False
    patches_per_image: Int(ge=1) = 8


class Data(_Section):
    """data: where the images are and how they are read."""

    train: str | None = Field(None, description="classification: class folders; segmentation: folder with x/ and y/")
    val: str | None = None
    val_split: Num(ge=0, lt=1) = 0.1
    cv_folds: Int(ge=2) | None = Field(
        None, description="k-fold cross-validation: train + val are pooled and split into k folds (stratified by "
                          "class for classification, seeded by experiment.split_seed); run_id i trains on the "
                          "other folds and validates on fold i (experiment.run_ids become 1..k); the fold "
                          "models are ensembled on the test set. null = one validation split (data.val / "
                          "data.val_split)")
    test: str | None = None
    test_has_labels: bool = True
    csv: str | None = Field(None, description="CSV or MedMNIST .npz turned into class folders first")
    csv_options: CsvOptions = section(CsvOptions)
    channels: Int(ge=1) = 1
    channel_axis: Literal["auto", "first", "last"] = Field(
        "auto", description="where the channel axis is in the files; auto: last unless a small leading axis "
                            "matches channels")
    patch_size: list[Int(ge=1)] = Field([256, 256], min_length=2, max_length=3)
    mask_transform: Literal["none", "foreground", "boundary_interior"] = Field(
        "none", description="segmentation: none = masks already hold class ids; foreground = mask > 0; "
                            "boundary_interior = background / boundary / interior from instance labels")
    resize: Literal["resize", "crop_pad"] = Field(
        "resize", description="classification: images whose size differs from patch_size")
    labels_csv: str | None = Field(
        None, description="multi-label: CSV with a file column and one 0/1 column per label")
    metadata_csv: str | None = Field(
        None, description="CSV with a file column and numeric feature columns fused into the head")
    normalization: Normalization = section(Normalization)
    sampling: Sampling = section(Sampling)
    strict: bool = Field(
        False, description="what bioflow adapts on its own (colour to grey, alpha dropped, images smaller than "
                           "the patch padded, files outside class folders ignored) is an error instead of a "
                           "warning")


class Model(_Section):
    """model: the network."""

    architecture: str | None = Field(
        None, description="any registered name; an unknown one lists the valid names (required unless "
                          "model.checkpoint is set)")
    checkpoint: str | None = Field(
        None, description="a bioflow checkpoint (.ckpt) of an earlier experiment: a predict-only experiment "
                          "(no training); the model, its classes, channels, patch size, normalization and "
                          "training-time data settings come from the file")
    n_classes: Int(ge=1) = 2
    multilabel: bool = False
    pretrained: bool = False
    weights: str | None = Field(None, description="local file of weights to load")
    encoder: str = Field("resnet18", description="smp encoder (2D segmentation)")
    features: list[Int(ge=1)] = Field([16, 32, 64, 128], min_length=2, description="3D U-Net / 3D CNN widths")
    residual: bool = False
    dropout: Num(ge=0, le=1) = 0.0
    dense_units: list[Int(ge=1)] = Field([], description="dense + dropout blocks before the classifier")
    metadata_units: list[Int(ge=1)] = Field([64], description="dense + dropout blocks after fusing metadata")
    kwargs: dict[str, Any] = Field({}, description="extra keyword arguments passed to the model constructor")


Precision = Literal["auto", "32", "bf16", "16"]
PRECISION_HELP = ("auto: bf16 on CPUs with native bf16 and on GPUs that support it, 16 (with a gradient "
                  "scaler) on older GPUs, 32 elsewhere")
# the values before one policy served training and inference (Lightning's names)
_OLD_PRECISION = {"32-true": "32", "16-mixed": "16", "bf16-mixed": "bf16", 32: "32", 16: "16"}


def _migrate_precision(v):
    return _OLD_PRECISION.get(v, v)


FlipAxis = Literal["x", "y", "z"]


class Augmentation(_Section):
    """train.augmentation: random transforms of training samples."""

    enabled: bool = True
    flips: bool | list[FlipAxis] = Field(
        True, description="axes mirrored at random (each with probability): x = left-right, y = up-down, "
                          "z = 3D depth; e.g. [x] for images with a meaningful up and down (chest X-rays); "
                          "true = every axis of the image, false = none. TTA uses the same axes",
        json_schema_extra={"uniqueItems": True})
    rot90: bool = True
    affine: bool = False
    brightness_contrast: bool = False
    gaussian_noise: bool = False
    probability: Num(ge=0, le=1) = 0.5

    @field_validator("flips")
    @classmethod
    def _unique_axes(cls, v):
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError("give each axis once")
        return v


class Train(_Section):
    """train: optimisation."""

    epochs: Int(ge=1) = 100
    patience: Int(ge=0) = 20
    batch_size: Int(ge=1) = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: Num(gt=0) = 1.0e-4
    weight_decay: Num(ge=0) = 1.0e-4
    momentum: Num(ge=0, le=1) = 0.9
    scheduler: Literal["none", "reduce_on_plateau", "one_cycle", "warmup_cosine"] = "warmup_cosine"
    warmup_epochs: Int(ge=0) = 2
    loss: Literal["ce", "focal", "bce", "dice", "ce_dice"] = "ce"
    loss_weights: list[Num(ge=0)] = Field([0.5, 0.5], min_length=2, max_length=2,
                                          description="ce_dice: weights of CE and Dice")
    class_weights: None | Literal["auto"] | list[Num(ge=0)] = None
    ignore_index: int | None = None
    focal_gamma: Num(ge=0) = 2.0
    monitor: str | None = Field(
        None, description="validation metric for best checkpoint / early stopping (default: per workflow)")
    monitor_ema: Num(ge=0, lt=1) = Field(
        0.0, description="early stopping and the best checkpoint follow an exponential moving average of the "
                         "monitored metric over epochs, ema = a * ema + (1 - a) * value (0: the raw metric); "
                         "steadies both on a small validation set")
    max_time_minutes: Num(gt=0) | None = Field(None, description="stop training after this wall time")
    steps_per_epoch: Int(ge=1) | None = None
    num_workers: Literal["auto"] | Int(ge=0) = Field(
        "auto", description="data loader processes; auto: from the cores the job has (0 on a CPU job with "
                            "fewer than 4 cores, where loading in the main process is fastest)")
    precision: Precision = Field("auto", description=PRECISION_HELP)
    devices: Literal["auto"] | Int(ge=1) = "auto"
    strategy: str = "auto"
    n_sample_images: Int(ge=0) = 4
    augmentation: Augmentation = section(Augmentation)

    @field_validator("precision", mode="before")
    @classmethod
    def _old_precision(cls, v):
        return _migrate_precision(v)


class Inference(_Section):
    """inference: prediction on the test set."""

    overlap: Num(ge=0, le=0.95) = Field(0.25, description="fraction of the tile shared with its neighbour")
    padding: Int(ge=0) = Field(16, description="context pixels discarded at tile borders")
    blending: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    precision: Precision = Field("auto", description=PRECISION_HELP)
    argmax: bool = True
    batch_size: Int(ge=1) = 8
    full_image: bool = Field(
        False, description="segmentation: also predict whole images without tiling when they fit (a second "
                           "forward pass per image)")
    patch_metrics: Literal["tiled", "independent", "off"] = Field(
        "tiled", description="segmentation, test masks known: per-patch TP/FP/FN on non-overlapping patch_size "
                             "patches, scored on the tiled prediction (no extra pass) or by an independent "
                             "forward pass per patch (BiaPy's per_patch)")
    binarize_threshold: Num(ge=0, le=1) = 0.5
    threshold: Literal["argmax", "youden", "f1", "auto"] | Num(gt=0, lt=1) = Field(
        "argmax", description="classification, binary and multi-label: the decision threshold on the "
                              "probability of the positive class (class_names[1]; per label for multi-label). "
                              "argmax: the plain decision; youden / f1: chosen on the validation set at the "
                              "end of training (max sensitivity + specificity - 1 / max F1), stored in the "
                              "checkpoint, on the validation probabilities made as the test ones are "
                              "(averaged over the TTA transforms when tta is on); auto: youden for binary and multi-label models, argmax for "
                              "multi-class ones (the templates' setting); a number: that threshold. "
                              "predictions.csv and the metrics keep the argmax decision beside the "
                              "thresholded one")
    memory_budget_mb: Num(gt=0) = Field(2048, description=(
        "memory for predicting one image: its buffers plus the model's activations for a batch of tiles; "
        "an image needing more is streamed chunk by chunk (with fewer tiles per batch where the activations "
        "need it)"))
    shards: Int(ge=1) = Field(
        1, description="prediction split over this many jobs (e.g. GPUs of a cluster), merged before metrics; "
                       "a rerun after a kill skips the images a shard finished")

    @field_validator("precision", mode="before")
    @classmethod
    def _old_precision(cls, v):
        return _migrate_precision(v)


class Postprocess(_Section):
    """postprocess: filters of the predicted 3D masks."""

    z_filter: Int(ge=0) = Field(0, description="median size along z; 0 = off")
    yz_filter: Int(ge=0) = 0


class Patches(_Section):
    """patches: the patch_classification workflow (2D, quadra's): patch dataset, frozen backbone
    features, scikit-learn head, reconstruction."""

    # inputs
    mask_extension: str = Field("", description="images/ + masks/ layout: the mask of images/a.png is "
                                "masks/a<mask_extension>.*; an image without one is wholly good")
    class_to_idx: dict[str, Int(ge=0)] | None = Field(
        None, description="class name -> mask value, 0 = good, values 0..n-1 (images/ or x/ layouts); null: "
        "class folders give the names (the *free* / *good* one first), else '0'..'n-1'")
    # generation (quadra's generate_patch_dataset)
    val_size: Num(ge=0, lt=1) = Field(0.3, description="fraction of the data.train images that make the val "
                                      "split when data.val is null (stratified by the classes an image holds)")
    test_size: Num(ge=0, lt=1) = Field(0.0, description="fraction of the data.train images held out as the "
                                       "test set when data.test is null")
    seed: Int(ge=0) = Field(42, description="seed of the val / test split")
    patch_size: list[Int(ge=1)] | None = Field([64, 64], min_length=2, max_length=2,
                                               description="[height, width] of a patch; or null and patch_number")
    patch_number: list[Int(ge=1)] | None = Field(
        None, min_length=2, max_length=2,
        description="[rows, columns] of patches per image (size per image); needs patch_size: null, input_size")
    overlap: Num(ge=0, lt=1) = Field(0.0, description="fraction of a patch shared with its neighbour on the grid")
    area_threshold: Num(ge=0, le=1) = Field(
        0.45, description="a grid patch is a defect when a class covers more than this fraction of it ...")
    area_defect_threshold: Num(ge=0, le=1) = Field(
        0.2, description="... or holds more than this fraction of one annotated defect; other defect "
        "pixels make it #DISCARD#")
    repeat_good_images: Int(ge=1) = Field(1, description="dataset.txt lines per image without defects")
    balance_defects: bool = Field(True, description="one good line per annotated defect (not one per image)")
    annotated_good: list[str] | None = Field(
        None, description="class names annotated but good (reconstruction counts them as background)")
    save_original_images_and_masks: bool = Field(True, description="copy images and class-index masks to original/")
    num_workers: Int(ge=1) = Field(1, description="processes writing the train h5 files")
    classification_folders: Int(ge=0) = Field(
        0, description="patches drawn per train/dataset.txt line into classification/train/<class>/ (quadra's "
        "sampling), with classification/val/<class>/ (the val grid patches without #DISCARD#): a class-folder "
        "dataset for the classification workflow, e.g. to train the backbone on your own patches; 0 = off")
    # training samples
    iteration_over_training: Int(ge=1) = Field(
        1, description="patches drawn per dataset.txt line (a new random centre each time)")
    balance_classes: bool = Field(False, description="repeat lines of rarer classes up to the most frequent's count")
    class_to_skip_training: list[str] | None = None
    include_filter: list[str] | None = Field(
        None, description="keep only dataset.txt lines whose h5 name contains one of these")
    exclude_filter: list[str] | None = Field(
        None, description="drop dataset.txt lines whose h5 name contains one of these")
    input_size: list[Int(ge=1)] | None = Field(
        None, min_length=2, max_length=2, description="backbone input [height, width]; null: patch_size")
    # features
    feature_stages: list[Int(ge=0)] | None = Field(
        None, min_length=1, description="backbone stages (timm forward_intermediates indices, e.g. [3, 4]: "
        "resnet18's last two) whose outputs, average-pooled over space, are concatenated as the features; "
        "null: the backbone's own pooled output")
    batch_size: Int(ge=1) = Field(64, description="patches per backbone forward pass")
    automatic_batch_size: bool = Field(True, description="halve batch_size on out-of-memory")
    # head
    classifier: str = Field("sklearn.linear_model.LogisticRegression", pattern=r"^sklearn\.[A-Za-z0-9_.]+$",
                            description="import path of a scikit-learn classifier")
    classifier_kwargs: dict[str, Any] = Field({"max_iter": 1000}, description="its keyword arguments")
    standardize: bool = Field(True, description="standardize features (StandardScaler) before the classifier")
    cross_validation: Int(ge=0) = Field(
        0, description="k-fold cross-validation of the head on the train features, folds grouped by image; 0 = off")
    # deployment / evaluation
    deployment: str | None = Field(
        None, description="predict-only: a deployment folder (model.json, backbone.pt, head.joblib) of an "
        "earlier run; no training stages")
    reconstruction: Literal["major_voting", "priority"] = Field(
        "major_voting", description="per pixel: the defect class most covering patches predict, or the "
        "top-priority one")
    class_priority: list[str] | None = Field(
        None, description="priority: class names, highest first; null: the higher class index wins")


class Metrics(_Section):
    """metrics: evaluation on the test set."""

    bootstrap: Int(ge=0) = Field(
        1000, description="bootstrap resamples for 95% confidence intervals; 0 = off")


class Report(_Section):
    """report: the HTML report."""

    title: str | None = None
    max_charts: Int(ge=0) = Field(12, description="charts shown per run")


class Author(_Section):
    """export.authors[]: an author of an exported model."""

    name: str
    affiliation: str | None = None
    orcid: str | None = Field(None, description="e.g. 0000-0002-1825-0097")


class Cite(_Section):
    """export.cite[]: a citation of an exported model (text plus a DOI or URL)."""

    text: str
    doi: str | None = None
    url: str | None = None


class Export(_Section):
    """export: the trained model as files that run without bioflow."""

    formats: list[Literal["torchscript", "onnx", "bioimageio"]] = Field(
        [], description="files written per run under <experiment>/export/: TorchScript (model.torchscript.pt), "
                        "ONNX (model.onnx; needs bioflow[export]), a BioImage Model Zoo package (bioimageio/rdf.yaml; "
                        "needs torchscript and export.authors), with export.json",
        json_schema_extra={"uniqueItems": True})
    name: str | None = Field(None, description="bioimageio: model name (default: made from the workflow)")
    description: str | None = Field(None, description="bioimageio: one-sentence description")
    authors: list[Author] = Field([], description="bioimageio: at least one")
    cite: list[Cite] = Field([], description="bioimageio: how to cite the model / its training data")
    license: str = Field("CC-BY-4.0", description="bioimageio: SPDX license id of the model")


class Config(_Section):
    """bioflow experiment configuration (one YAML per experiment).

    Defaults are filled in by bioflow.config.load and by the Snakefile, so a config only states
    what it changes. Unknown keys are rejected to catch typos.
    """

    model_config = ConfigDict(extra="forbid", strict=True, title="bioflow experiment config")

    experiment: Experiment
    data: Data
    model: Model
    train: Train = section(Train)
    inference: Inference = section(Inference)
    postprocess: Postprocess = section(Postprocess)
    patches: Patches = section(Patches)
    metrics: Metrics = section(Metrics)
    report: Report = section(Report)
    export: Export = section(Export)

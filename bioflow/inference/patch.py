"""Stage ``predict`` (patch classification): every test grid patch through a deployment
folder -> ``predictions.csv``.

In a training run the folder is the run's own ``deployment/`` and the test features cached
by ``patch_features`` are reused (the same frozen backbone computed them). In a predict-only
run (``patches.deployment``) the test patches go through the folder's TorchScript backbone.
``head.joblib`` is unpickled only from the deployment folder the stage was given (the
config's ``patches.deployment`` or the run's own), after its SHA-256 matched ``model.json``:
joblib files run code when loaded.

``predictions.csv``: ``file`` (relative to ``prepared/patches``), ``image``, ``index`` (grid
position), ``discard``, ``label`` (true class, empty when unlabelled), ``pred`` and
``p_<class>`` per class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bioflow.data import patch_sampling as ps
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, read_image, read_json
from bioflow.models.serialization import load_joblib

log = logging.getLogger(__name__)
FILES = ("model.json", "backbone.pt", "head.joblib")


def load_deployment(folder, allowed) -> tuple[dict, object, object]:
    """(model.json, TorchScript backbone, head) of a deployment folder. ``allowed``: the
    folders the config names; any other folder is refused before anything is unpickled."""
    import torch
    folder = Path(folder)
    if folder.resolve() not in {Path(a).resolve() for a in allowed}:
        raise BioflowError(f"{folder}: not a deployment folder named by the config; joblib files are "
                           f"loaded only from patches.deployment or the run's own deployment/")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise BioflowError(f"patches.deployment: {folder} lacks {', '.join(missing)}; give the deployment/ "
                           f"folder of a patch classification run")
    model = read_json(folder / "model.json")
    head = load_joblib(folder / "head.joblib", allowed, model.get("head_sha256"), "patches.deployment")
    backbone = torch.jit.load(str(folder / "backbone.pt"), map_location="cpu").eval()
    return model, backbone, head


def check_geometry(model: dict, info: dict, folder) -> None:
    from bioflow.models.patch_features import geometry
    ours = geometry(info)
    for k, v in model["geometry"].items():
        if ours.get(k) != v:
            raise BioflowError(f"patches.{k}: {ours.get(k)} here but the deployment {folder} was trained with "
                               f"{v}; set patches.{k}: {v}")
    if list(info["classes"]) != list(model["classes"]):
        raise BioflowError(f"patches.class_to_idx: classes {info['classes']} here but {model['classes']} in "
                           f"the deployment {folder}; use the deployment's classes")


def test_features(model: dict, backbone, items, patches_dir, batch_size: int, automatic: bool) -> np.ndarray:
    """Features of the test patches through the deployment's TorchScript backbone."""
    from bioflow.models.patch_features import extract
    norm = model["normalization"]
    imgs = [read_image(g.path, 2, model["channels"]) for g in items]
    return extract(backbone, imgs, norm["stats"], norm["config"], model["input_size"], batch_size, automatic)


def predict(cfg: dict, info_path, deployment, features_path, out_csv) -> Path:
    import h5py
    import pandas as pd
    info = read_json(info_path)
    patches_dir = Path(info_path).parent
    configured = cfg["patches"]["deployment"]
    model, backbone, head = load_deployment(deployment, [configured] if configured else [deployment])
    check_geometry(model, info, deployment)
    items = ps.grid_patches(patches_dir / "test")
    if not items:
        raise BioflowError(f"{patches_dir}/test: no test patches; check data.test / patches.test_size")
    if features_path:
        with h5py.File(features_path, "r") as f:
            files = [v.decode() if isinstance(v, bytes) else v for v in f["test/files"][()]]
            feats = f["test/features"][()]
        if files != [str(g.path.relative_to(patches_dir)) for g in items]:
            raise BioflowError(f"{features_path}: cached for other test patches; rerun patch_features")
    else:
        feats = test_features(model, backbone, items, patches_dir, int(cfg["patches"]["batch_size"]),
                              bool(cfg["patches"]["automatic_batch_size"]))
    classes = model["classes"]
    probs = np.zeros((len(items), len(classes)))
    probs[:, head.classes_] = head.predict_proba(feats)
    pred = probs.argmax(1)
    table = pd.DataFrame({"file": [str(g.path.relative_to(patches_dir)) for g in items],
                          "image": [g.image for g in items], "index": [g.index for g in items],
                          "discard": [g.discard for g in items],
                          "label": [g.class_name or "" for g in items],
                          "pred": [classes[i] for i in pred]})
    for i, c in enumerate(classes):
        table[f"p_{c}"] = probs[:, i]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    log.info("predict: %d test patches, %d predicted defective", len(items), int((pred > 0).sum()))
    return Path(out_csv)

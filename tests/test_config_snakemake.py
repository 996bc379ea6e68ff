"""`snakemake --config` overrides reach bioflow.config as strings and are coerced to the key's type.

Snakemake 8/9 reads a nested `--config` value with YAML's BaseLoader: `inference={"tta": true}`
arrives as {"tta": "true"} and `train={lr: 0.5}` as {"lr": "0.5"}. One dry run shows the coerced
values land in the Snakefile's own `config`; a second that an impossible value names its key.
"""
import json

from helpers_snakemake import snakemake, tiny_demo_config

# Runs in the Snakemake process before the Snakefile: record the config after validate() filled it.
PRELUDE = """
import json
import bioflow.config as c
_validate = c.validate
def validate(cfg, source="config"):
    out = _validate(cfg, source)
    open({path!r}, "w").write(json.dumps(cfg))
    return out
c.validate = validate
"""


def test_nested_command_line_overrides_are_coerced(tmp_path):
    cfg_file = tiny_demo_config(tmp_path / "demo.yaml")
    seen = tmp_path / "validated.json"
    snakemake(tmp_path, cfg_file, "-n", "--cores", "1", "--config", 'inference={"tta": true}',
              "train={lr: 0.5, epochs: 2}", 'data={"patch_size": [28, 28]}',
              prelude=PRELUDE.format(path=str(seen)))
    cfg = json.loads(seen.read_text())
    assert cfg["inference"]["tta"] is True
    assert cfg["train"]["lr"] == 0.5 and cfg["train"]["epochs"] == 2
    assert cfg["data"]["patch_size"] == [28, 28]
    # --config merges into the --configfile sections and the defaults are filled in
    assert cfg["train"]["class_weights"] == "auto" and cfg["train"]["optimizer"] == "adamw"

    proc = snakemake(tmp_path, cfg_file, "-n", "--cores", "1", "--config", 'inference={"tta": maybe}',
                     check=False)
    assert proc.returncode != 0
    assert "inference.tta: input should be a valid boolean (got 'maybe')" in proc.stdout + proc.stderr

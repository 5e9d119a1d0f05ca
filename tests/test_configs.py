"""Every config in conf/ and experiments/ composes and instantiates: new configs are tested automatically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mfe_iqa.cli.common import CONF_DIR

REPO = CONF_DIR.parent
EXPERIMENTS = REPO / "experiments"
ROOT_CONFIGS = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
SKIP_GROUPS = {"local", "experiment", "hydra", "debug", "hparams_search", "launcher"}


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _groups() -> list[tuple[str, str]]:
    out = []
    for d in sorted(CONF_DIR.iterdir()):
        if d.is_dir() and d.name not in SKIP_GROUPS and not d.is_symlink():
            out += [(d.name, opt) for opt in _group_options(d.name)]
    return out


def _experiments() -> list[str]:
    return sorted(str(p.relative_to(EXPERIMENTS).with_suffix("")) for p in EXPERIMENTS.rglob("*.yaml"))


def test_root_configs_exist():
    for name in ("train", "pretrain", "eval", "predict"):
        assert (CONF_DIR / f"{name}.yaml").is_file(), f"conf/{name}.yaml is missing"
    assert (CONF_DIR / "experiment").resolve() == EXPERIMENTS.resolve()


@pytest.mark.parametrize("name", ROOT_CONFIGS)
def test_root_config_composes(compose_cfg, name):
    cfg = compose_cfg(name, [])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (the hydra node is read-only)
    assert cfg.paths.output_dir


@pytest.mark.parametrize(("group", "option"), _groups())
def test_group_option_composes_and_instantiates(compose_cfg, group, option):
    if group in {"pretrain_data", "pretrain_system"}:
        cfg = compose_cfg("pretrain", [f"{group}={option}"])
    else:
        cfg = compose_cfg("train", [f"{group}={option}"])
    node = cfg.get(group)
    if group in {"data", "model", "pretrain_data"}:
        obj = instantiate(node)
        assert obj is not None
    elif group == "trainer":
        if node.get("accelerator") in ("cpu", "auto") and node.get("strategy") != "ddp_spawn":
            trainer = instantiate(node, logger=False, enable_checkpointing=False)
            assert trainer.max_epochs == node.max_epochs
        else:  # GPU / multi-process configs: composing and resolving is what can be checked here
            OmegaConf.to_container(node, resolve=True)
    elif group in {"callbacks", "logger"}:
        from mfe_iqa.cli.common import instantiate_callbacks, instantiate_loggers

        objs = instantiate_callbacks(node) if group == "callbacks" else instantiate_loggers(node)
        for obj in objs:
            assert obj is not None
    else:
        OmegaConf.to_container(node, resolve=True) if node is not None else None


@pytest.mark.parametrize("experiment", _experiments())
def test_experiment_composes_and_instantiates(compose_cfg, experiment):
    cfg = compose_cfg("train", [f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)
    assert instantiate(cfg.model) is not None
    assert instantiate(cfg.data) is not None
    assert cfg.experiment_name and cfg.experiment_name != "default"


def _run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "mfe_iqa.cli.train",
        f"hydra.run.dir={tmp_path}/run",
        "logger=csv_only",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_unknown_dataset_is_one_paragraph_naming_choices(tmp_path):
    res = _run_cli(["data=no_such_db"], tmp_path)
    assert res.returncode != 0
    err = res.stderr
    assert "Traceback" not in err
    assert "data" in err and "no_such_db" in err
    for option in ("livec", "demo", "koniq10k"):
        assert option in err, f"the error should list the available data options, got:\n{err}"


def test_missing_database_root_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    res = _run_cli(["data=live", f"data.root={missing}", "train=false", "test=false"], tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert str(missing) in res.stderr and "data.root" in res.stderr

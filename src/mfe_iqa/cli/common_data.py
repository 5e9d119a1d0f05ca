"""Compose a database's data config by name (``conf/data/<name>.yaml``) inside or outside a running Hydra app.

Used for the cross-dataset test sets of ``mfe-iqa-train`` (``test_sets=[csiq,tid2013]``) and for the
databases of ``mfe-iqa-eval`` (``datasets=[...]``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from mfe_iqa.cli.common import CONF_DIR, ConfigError

# Keys of the evaluation protocol that a composed test set takes over from the run's own `data`, so that every
# test set is scored as the own test split is (same crop size, crop count, mode and crop seed). A config may
# replace the list with the root key `test_set_inherit`.
EVAL_PROTOCOL_KEYS: tuple[str, ...] = ("crop_size", "test_mode", "test_crops", "crop_seed")


def available_data_configs() -> list[str]:
    """Names of the data configs under conf/data."""
    return sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))


@contextlib.contextmanager
def _hydra_ready() -> Iterator[None]:
    """Inside a Hydra app GlobalHydra is initialized: compose directly; otherwise initialize it for the call."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def compose_data_config(
    name: str,
    cfg: DictConfig,
    inherit: Sequence[str] | None = None,
    output_subdir: str = "test_sets",
) -> DictConfig:
    """The resolved ``conf/data/<name>.yaml`` (its defaults list processed) as ``cfg.data`` would be.

    Interpolations (``${paths.data_dir}``, ``${split}``, ...) resolve against ``cfg``, so command-line overrides
    such as ``paths.data_dir=...`` apply. The evaluation-protocol keys ``inherit`` (default: ``cfg.test_set_inherit``
    or ``EVAL_PROTOCOL_KEYS``) are copied from ``cfg.data`` when it has them. ``output_dir`` (where a data module
    writes its split.csv) becomes ``<paths.output_dir>/<output_subdir>/<name>`` so it never overwrites the run's own.
    """
    from hydra import compose

    name = str(name)
    if not (CONF_DIR / "data" / f"{name}.yaml").is_file():
        raise ConfigError(
            f"no data config named '{name}' (conf/data/{name}.yaml); available: {', '.join(available_data_configs())}"
        )
    with _hydra_ready():
        composed = compose(config_name=f"data/{name}")
    root = copy.deepcopy(cfg)
    with open_dict(root):
        root.data = composed.data
        node = root.data
        source = cfg.get("data") if isinstance(cfg.get("data"), DictConfig) else None
        keys = (
            list(inherit) if inherit is not None else list(cfg.get("test_set_inherit") or EVAL_PROTOCOL_KEYS)
        )
        if source is not None:
            for key in keys:
                if key in source and key in node:
                    node[key] = source[key]
        out = OmegaConf.select(cfg, "paths.output_dir", default=None)
        if "output_dir" in node:
            node.output_dir = str(Path(out) / output_subdir / name) if out else None
    try:
        resolved = OmegaConf.to_container(node, resolve=True)
    except Exception as err:  # omegaconf raises several interpolation error types
        raise ConfigError(f"data config '{name}' does not resolve against this run's config: {err}") from err
    return OmegaConf.create(resolved)

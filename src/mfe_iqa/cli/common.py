"""What every Hydra entry point shares: config location, the task wrapper, loggers, callbacks, tables."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mfe_iqa.errors import UserError

log = logging.getLogger("mfe_iqa")

REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = REPO_ROOT / "conf"
# conf/paths/default.yaml reads the project root from this variable.
os.environ.setdefault("MFE_IQA_ROOT", str(REPO_ROOT))


def _mkdir_resolver(path: str) -> str:
    """`${mfe_mkdir:<dir>}`: create the folder and return it (e.g. the Optuna SQLite file's folder)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


if not OmegaConf.has_resolver("mfe_mkdir"):
    OmegaConf.register_new_resolver("mfe_mkdir", _mkdir_resolver)


class ConfigError(UserError, ValueError):
    """A configuration the user can fix: the message names the key and the choices."""


def _finish_wandb() -> None:
    """Close the current W&B run so that the next job of a multirun starts its own."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run a task: log any exception with the run dir, always close W&B, and report the wall time."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        start = time.perf_counter()
        try:
            return task(cfg)
        except UserError:
            raise  # reported as one paragraph by `exit_on_user_error`
        except Exception:
            out = OmegaConf.select(cfg, "paths.output_dir", default="?")
            log.exception("Task '%s' failed (run dir: %s)", task.__name__, out)
            raise
        finally:
            _finish_wandb()
            log.info("Task '%s' took %.1f s", task.__name__, time.perf_counter() - start)

    return wrapped


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list:
    """Instantiate every callback of the `callbacks` group that has a `_target_` (others are skipped)."""
    from hydra.utils import instantiate

    if not callbacks_cfg:
        return []
    if not isinstance(callbacks_cfg, DictConfig):
        raise ConfigError("`callbacks` must be a mapping of name -> callback config")
    return [instantiate(c) for c in callbacks_cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def instantiate_loggers(logger_cfg: DictConfig | None) -> list:
    """Instantiate every logger of the `logger` group that has a `_target_`."""
    from hydra.utils import instantiate

    if not logger_cfg:
        return []
    if not isinstance(logger_cfg, DictConfig):
        raise ConfigError("`logger` must be a mapping of name -> logger config")
    return [instantiate(c) for c in logger_cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def run_for_sweeper(task: Callable[[DictConfig], Mapping[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task`` and return ``cfg.optimized_metric`` from its result (what Optuna maximizes).

    With ``on_failure: nan`` a failing job logs the error and returns NaN, so a basic sweep goes on past it.
    (On the command line ``on_failure=nan`` arrives as the float NaN, in a file as the string "nan".)
    """
    try:
        result = task(cfg)
    except Exception:
        if str(cfg.get("on_failure")).lower() == "nan":
            log.error("This job failed; returning NaN so that the sweep records it as failed and continues")
            return float("nan")
        raise
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in result:
        raise ConfigError(f"optimized_metric='{name}' was not logged by this run; logged: {sorted(result)}")
    return float(result[name])


def hydra_choice(group: str, default: Any = None) -> Any:
    """The option chosen for a config group in this run (e.g. ``data`` -> ``livec``), or ``default`` outside
    a Hydra app. (``OmegaConf.select(cfg, "hydra:runtime.choices.data")`` is not a path and always gives the
    default.)"""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    choice = HydraConfig.get().runtime.choices.get(group)
    return default if choice is None else choice


def save_resolved_config(cfg: DictConfig, output_dir: str | Path, name: str = "config_resolved.yaml") -> Path:
    """Write the fully resolved config of a run next to its results."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def log_hyperparameters(cfg: DictConfig, loggers: list, extra: Mapping[str, Any] | None = None) -> None:
    """Send the resolved config (and parameter counts) to every logger."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    if extra:
        hparams.update(extra)
    for lg in loggers:
        lg.log_hyperparams(hparams)
        if type(lg).__name__ == "WandbLogger":
            # The resolved config as a run file too: offline runs keep it readable next to the run
            # (files/ is uploaded by `wandb sync`), not only inside the binary .wandb record.
            run_dir = Path(lg.experiment.dir)
            (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def print_metrics_table(title: str, rows: Mapping[str, Mapping[str, float]]) -> str:
    """Print one row per test set (columns: the metrics) with rich; returns the plain-text table too."""
    from rich.console import Console
    from rich.table import Table

    columns: list[str] = []
    for metrics in rows.values():
        for k in metrics:
            if k not in columns:
                columns.append(k)
    table = Table(title=title)
    table.add_column("test set")
    for c in columns:
        table.add_column(c, justify="right")
    lines = [" | ".join(["test set", *columns])]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns]
        table.add_row(name, *cells)
        lines.append(" | ".join([name, *cells]))
    Console().print(table)
    return "\n".join(lines)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    tmp.replace(path)
    return path


@contextlib.contextmanager
def kept_rng_state() -> Iterator[None]:
    """Run a block without moving the global random streams (Python, NumPy, torch CPU, torch CUDA).

    The train command pre-trains DAN inside the job between ``seed_everything`` and building the network;
    the pre-training draws (and re-seeds) the same global generators. Kept, the network starts from the
    same initialization and the fit sees the same data order whether the DAN was pre-trained in the job
    or loaded from a ``dan.pt`` (``pretrain_dan.enabled=false``): one model, one draw.
    """
    import random

    import numpy as np
    import torch

    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_seeded = torch.cuda.is_available()
    cuda_states = torch.cuda.get_rng_state_all() if cuda_seeded and torch.cuda.is_initialized() else None
    cpu_seed = torch.initial_seed()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif cuda_seeded:  # CUDA came up inside the block: seed it as torch.manual_seed had (lazily) done
            torch.cuda.manual_seed_all(cpu_seed)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def configure_runtime(cfg: DictConfig) -> None:
    """Process-wide settings from `extras`: warnings, float32 matmul precision, CPU threads."""
    import warnings

    import torch

    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("matmul_precision"):
        torch.set_float32_matmul_precision(extras.matmul_precision)
    threads = extras.get("torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    if extras.get("print_config"):
        log.info("Config:\n%s", OmegaConf.to_yaml(cfg, resolve=False))


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Inside a Hydra main: print a UserError as one paragraph and exit 2 (single run), instead of a traceback.

    Under a multirun the error is re-raised so the sweeper/launcher records the failed job.
    """

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapped

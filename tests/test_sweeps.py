"""Sweeps at scale: basic multirun, Optuna (SQLite study, resume, failed trials), joblib, SLURM configs.

The multiruns are real `mfe-iqa-train -m` subprocesses on the demo database (generated once under the
repository's default data dir, then cached), shrunk to a few 32 px batches of mfenet_tiny on one CPU thread.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from train_run_helpers import run_train

# A job in a few seconds: 24 demo images, 1 train batch of 4 crops of 32 px, one val and one test batch.
TINY = [
    "data.limit_items=24",
    "data.batch_size=4",
    "data.crop_size=32",
    "data.test_crops=1",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.accelerator=cpu",
    "extras.torch_threads=1",
]

OPTUNA_KEYS = {
    "system.optimizer.lr",
    "system.backbone_lr_mult",
    "system.lambda_hf",
    "system.lambda_dist",
    "data.train_crops",
    "model.fusion",
}


def _multirun(sweep_dir: Path, args: list[str], logger: str = "csv_only") -> subprocess.CompletedProcess:
    """`mfe-iqa-train -m` into `sweep_dir`; fails the test with the output's tail if the command fails."""
    cmd = ["-m", f"hydra.sweep.dir={sweep_dir}", f"logger={logger}", *TINY, *args]
    res = run_train(cmd, timeout=300)
    assert res.returncode == 0, (
        f"mfe-iqa-train {' '.join(cmd)}\n--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}"
    )
    return res


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_basic_sweep_one_wandb_run_per_job_in_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    _multirun(sweep, ["split.index=0,1", "experiment_name=sweep_test"], logger="many")
    jobs = _job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    run_ids = set()
    for index, job in enumerate(jobs):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["split_index"] == index and metrics["experiment"] == "sweep_test"
        assert metrics["test"]["demo"]["srcc"] is not None
        cfg = OmegaConf.load(job / "config_resolved.yaml")
        assert cfg.logger.wandb.group == "sweep_test" and cfg.logger.wandb.offline is True
        assert Path(cfg.logger.wandb.save_dir) == job
        runs = list((job / "wandb").glob("offline-run-*"))  # W&B writes under the job's own run dir
        assert len(runs) == 1, runs
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2  # each job is its own W&B run


def test_optuna_params_exist_in_the_train_config(compose_cfg):
    cfg = compose_cfg("train", ["hparams_search=optuna"])
    params = cfg.hydra.sweeper.params
    assert set(params) == OPTUNA_KEYS
    missing = object()
    for key in params:
        assert OmegaConf.select(cfg, key, default=missing) is not missing, f"{key} is not in the train config"
    assert cfg.optimized_metric == "val/srcc_best" and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.on_failure == "raise" and cfg.hydra.sweeper.max_failure_rate == 1.0


def test_optuna_sqlite_study_resumes_and_records_failed_trials(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "optuna"
    args = ["hparams_search=optuna", "experiment_name=optuna_test"]
    _multirun(sweep, [*args, "hydra.sweeper.n_trials=3"])
    db = sweep / "optuna.db"
    assert db.is_file()
    first_jobs = _job_dirs(sweep)
    assert len(first_jobs) == 3 and all((j / "metrics.json").is_file() for j in first_jobs)

    # Resume: the same command and sweep dir add trials to the same study. Both new trials crash in the
    # job (an invalid model.hf_fusion raises when MFENet is built): recorded as FAIL, the sweep completes.
    res = _multirun(sweep, [*args, "hydra.sweeper.n_trials=2", "model.hf_fusion=bogus"])
    assert "Failed experiment" in res.stdout + res.stderr

    study = optuna.load_study(study_name="optuna_test", storage=f"sqlite:///{db}")
    states = [t.state for t in sorted(study.trials, key=lambda t: t.number)]
    done, failed = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert states == [done, done, done, failed, failed]
    for trial in study.trials[:3]:
        assert set(trial.params) == OPTUNA_KEYS
        assert -1.0 <= trial.value <= 1.0  # val/srcc_best
    assert study.best_trial.number < 3
    # the resumed jobs got new run dirs: the first trials' results are still there
    jobs = _job_dirs(sweep)
    assert len(jobs) == 5 and set(first_jobs) < set(jobs)
    assert all((j / "metrics.json").is_file() for j in first_jobs)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "joblib"
    res = _multirun(sweep, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "split.index=0,1"])
    assert "Joblib.Parallel(n_jobs=2" in res.stdout + res.stderr
    jobs = _job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    assert [json.loads((j / "metrics.json").read_text())["split_index"] for j in jobs] == [0, 1]


def test_slurm_launcher_config_resolves(compose_cfg, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import get_class, instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    # the cluster specifics as a user puts them in the git-ignored conf/local/default.yaml
    local = tmp_path / "extra_conf" / "local"
    local.mkdir(parents=True)
    (local / "default.yaml").write_text(
        "# @package _global_\nslurm:\n  partition: gpu_a100\n  account: proj123\n  gpus_per_node: 2\n"
    )
    search = f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]"
    cfg = compose_cfg("train", ["launcher=slurm", "experiment=paper/livec", search])
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "submitit_slurm"
    assert cfg.hydra.runtime.choices.trainer == "ddp" and cfg.trainer.strategy == "ddp"
    assert cfg.ckpt_path == "auto"
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == cfg.trainer.devices == launcher["gpus_per_node"] == 2
    assert launcher["nodes"] == cfg.trainer.num_nodes == 1
    assert launcher["partition"] == "gpu_a100" and launcher["account"] == "proj123"
    assert launcher["timeout_min"] == 720 and launcher["signal_delay_s"] == 120
    assert launcher["max_num_timeout"] == 3
    assert launcher["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"
    assert get_class(launcher["_target_"]).__name__ == "SlurmLauncher"

    env = instantiate(cfg.trainer.plugins[0])
    assert isinstance(env, SLURMEnvironment)
    assert env.requeue_signal == signal.SIGUSR2 and env.auto_requeue is False  # submitit requeues

    # the sbatch header submitit writes from these values: SIGUSR2 120 s before the limit, one task per GPU
    from submitit.slurm.slurm import SlurmJobEnvironment, _make_sbatch_string

    assert signal.Signals[f"SIG{SlurmJobEnvironment.USR_SIG}"] == env.requeue_signal
    sbatch = _make_sbatch_string(
        command="python -u -m submitit.core._submit x",
        folder=launcher["submitit_folder"],
        partition=launcher["partition"],
        account=launcher["account"],
        time=launcher["timeout_min"],
        nodes=launcher["nodes"],
        ntasks_per_node=launcher["tasks_per_node"],
        gpus_per_node=launcher["gpus_per_node"],
        cpus_per_task=launcher["cpus_per_task"],
        signal_delay_s=launcher["signal_delay_s"],
        setup=launcher["setup"],
    )
    for line in (
        "--signal=USR2@120",
        "--ntasks-per-node=2",
        "--gpus-per-node=2",
        "--partition=gpu_a100",
        "--account=proj123",
        "--time=720",
    ):
        assert f"#SBATCH {line}" in sbatch, sbatch

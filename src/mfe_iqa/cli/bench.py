"""`mfe-iqa-bench`: training, data-loading and prediction throughput and prediction memory of a model preset."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mfe_iqa.cli.common import (
    CONF_DIR,
    ConfigError,
    configure_runtime,
    exit_on_user_error,
    task_wrapper,
    write_json,
)

log = logging.getLogger("mfe_iqa.bench")


def _model_name(cfg: DictConfig, model_cfg: dict) -> str:
    """The model preset's name (``model=...`` choice) when Hydra knows it, else the network class."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("model")
        if choice:
            return str(choice)
    return str(model_cfg.get("_target_"))


@task_wrapper
def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run every measurement of ``conf/bench.yaml``, write the JSON, print the table; return the results."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from mfe_iqa.inference import bench as B
    from mfe_iqa.inference.predict import predict_to_csv
    from mfe_iqa.inference.scoring import Scorer, ViewSpec, resolve_device
    from mfe_iqa.inference.sources import resolve_inputs

    configure_runtime(cfg)
    L.seed_everything(int(cfg.seed))
    device = resolve_device(cfg.device)
    out = Path(cfg.paths.output_dir)
    tr, pr, mem = cfg.train, cfg.predict, cfg.memory
    needed = max(int(mem.large), int(pr.num_images), 1)
    if cfg.images:
        try:
            paths = resolve_inputs(cfg.images)
        except FileNotFoundError as err:
            raise ConfigError(f"images: {err}") from err
    else:
        paths = B.write_synthetic_images(
            out / "bench_images", needed, int(cfg.image_size), int(cfg.jpeg_quality), int(cfg.seed)
        )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)

    def net_factory() -> torch.nn.Module:
        torch.manual_seed(int(cfg.seed))
        return instantiate(model_cfg)

    def system_factory(net: torch.nn.Module):
        return instantiate(cfg.system, net=net, model_cfg=OmegaConf.to_yaml(cfg.model, resolve=True))

    # Prediction first, in a process that has not trained yet: warm-up, memory, end to end, bare forward.
    views = ViewSpec(pr.mode, int(pr.crops), int(pr.crop_size))
    scorer = Scorer(net_factory(), device=device, precision=cfg.precision)
    bs, workers = int(pr.batch_size), int(pr.num_workers)

    def run_predict(n: int, name: str):
        return predict_to_csv(
            scorer, B.cycle_paths(paths, n), out / f"{name}.csv", views, None, bs, workers, progress=False
        )

    clock = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now
        log.info("bench phase '%s' took %.1f s", name, phases[name])

    run_predict(max(1, int(pr.warmup_batches)) * bs, "bench_warmup")
    gc.collect()
    rss_small = B.peak_rss_mb(lambda: run_predict(int(mem.small), "bench_memory_small"))
    gc.collect()
    rss_large = B.peak_rss_mb(lambda: run_predict(int(mem.large), "bench_memory_large"))
    lap("predict_memory")
    e2e = run_predict(int(pr.num_images), "bench_predict")
    if e2e.num_failed:
        raise ConfigError(f"{e2e.num_failed} benchmark images could not be scored: see {e2e.output}")
    batches = B.preload_views(B.cycle_paths(paths, int(pr.num_images)), views, bs)
    forward = B.forward_rate(scorer, batches, int(pr.warmup_batches))
    del batches
    gc.collect()
    lap("predict_throughput")

    # Training: Lightning vs plain loop on copies of one module, then the loader alone.
    steps, warmup = int(tr.steps), int(tr.warmup_steps)
    loader = B.make_train_loader(
        paths, int(tr.crop_size), int(tr.batch_size), int(tr.num_workers), warmup + steps, int(cfg.seed)
    )
    lightning_ips, plain_ips = B.best_of_alternating(
        system_factory(net_factory()), loader, warmup, steps, device, cfg.precision, int(tr.repeats)
    )
    lap("training")
    dl_batches = int(cfg.data_loader.batches)
    dl_loader = B.make_train_loader(
        paths, int(tr.crop_size), int(tr.batch_size), int(tr.num_workers), dl_batches + 2, int(cfg.seed)
    )
    loader_ips = B.data_loader_rate(dl_loader, warmup=2, batches=dl_batches)
    lap("data_loader")

    cuda = None
    if device.type == "cuda" and cfg.cuda.enabled:
        c = cfg.cuda
        cuda = B.cuda_measurements(
            net_factory,
            system_factory,
            int(c.batch_size),
            int(c.crop_size),
            int(c.warmup_steps),
            int(c.steps),
            bool(c.compile),
            bool(c.channels_last),
        )
        lap("cuda")
    results: dict[str, Any] = {
        "model": _model_name(cfg, model_cfg),
        "precision": cfg.precision,
        "machine": B.machine_info(device),
        "images": "synthetic" if not cfg.images else str(cfg.images),
        "train": {
            "batch_size": int(tr.batch_size),
            "crop_size": int(tr.crop_size),
            "num_workers": int(tr.num_workers),
            "warmup_steps": warmup,
            "steps": steps,
            "lightning_images_per_s": lightning_ips,
            "plain_images_per_s": plain_ips,
            "lightning_vs_plain": lightning_ips / plain_ips,
        },
        "data_loader": {"images_per_s": loader_ips, "batches": dl_batches},
        "predict": {
            "batch_size": bs,
            "num_workers": workers,
            "views": {"mode": views.mode, "crops": views.num_crops, "crop_size": views.crop_size},
            "num_images": int(pr.num_images),
            "end_to_end_images_per_s": e2e.images_per_s,
            "forward_images_per_s": forward,
            "end_to_end_vs_forward": e2e.images_per_s / forward,
        },
        "memory": {
            "method": "VmHWM of the prediction process (Linux /proc, reset via clear_refs); workers excluded",
            "small": int(mem.small),
            "large": int(mem.large),
            "peak_rss_mb_small": rss_small,
            "peak_rss_mb_large": rss_large,
            "large_vs_small": None if rss_small is None or rss_large is None else rss_large / rss_small,
        },
        "cuda": cuda,
        "phase_seconds": phases,
    }
    results["targets"] = B.check_targets(results, OmegaConf.to_container(cfg.targets, resolve=True))
    write_json(cfg.output, results)
    B.print_report(results)
    log.info("Wrote %s", cfg.output)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry of `mfe-iqa-bench`."""
    bench(cfg)


if __name__ == "__main__":
    main()

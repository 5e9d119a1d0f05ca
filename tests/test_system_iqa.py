"""IQATrainingModule on a tiny in-memory database whose MOS is a learnable image property (see training_helpers)."""

from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import DataLoader

from mfe_iqa.data.items import BATCH_DIST_TYPE, BATCH_IMAGE, BATCH_MOS, IQAItem
from mfe_iqa.losses.iqa import PLCCLoss, QualityLoss
from mfe_iqa.models.mfenet import MFENet
from mfe_iqa.systems.iqa import (
    CKPT_META_KEY,
    CheckpointFormatError,
    IQATrainingModule,
    load_net_from_checkpoint,
    warmup_cosine_schedule,
)
from training_helpers import MODEL_CFG, SIZE, NoiseDB, TinyNet, one_torch_thread  # noqa: F401 (autouse fixture)

DATABASE = {"name": "contrast", "mos_min": 0.0, "mos_max": 1.0, "lower_better": False}


def make_system(lr: float = 2e-2, **kw) -> IQATrainingModule:
    torch.manual_seed(0)
    args = {
        "net": TinyNet(),
        "quality_loss": QualityLoss(l1=1.0, plcc=1.0),  # the PLCC term avoids the L1 median collapse
        "lambda_hf": 0.1,
        "lambda_dist": 0.1,
        "optimizer": functools.partial(torch.optim.AdamW, lr=lr),
        "scheduler": functools.partial(warmup_cosine_schedule, warmup_fraction=0.1, min_lr_ratio=0.1),
        "backbone_lr_mult": 0.5,
        "weight_decay": 0.01,
        "model_cfg": MODEL_CFG,
        "database": DATABASE,
    }
    args.update(kw)
    return IQATrainingModule(**args)


def make_trainer(tmp_path, epochs: int = 1, callbacks=None, **kw) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks) and any(isinstance(c, ModelCheckpoint) for c in callbacks),
        callbacks=callbacks or [],
        num_sanity_val_steps=0,
        **kw,
    )


def loaders(crops: int = 2):
    train = DataLoader(NoiseDB(64, seed=1), batch_size=16, shuffle=True)
    val = DataLoader(NoiseDB(24, seed=2, crops=crops), batch_size=8)
    test = DataLoader(NoiseDB(24, seed=3, crops=crops), batch_size=8)
    return train, val, test


class ValHistory(Callback):
    def __init__(self) -> None:
        self.srcc: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:  # after the module's epoch-end logging
        if not trainer.sanity_checking:
            self.srcc.append(float(trainer.callback_metrics["val/srcc"]))


# ---------------------------------------------------------------------------------------------------------------
def test_losses_are_combined_and_logged_separately(tmp_path):
    system = make_system()
    batch = next(iter(DataLoader(NoiseDB(8, seed=5), batch_size=8)))
    out = system(batch[BATCH_IMAGE])
    losses = system.compute_losses(out, batch)
    expected = losses["loss_quality"] + 0.1 * losses["loss_hf"] + 0.1 * losses["loss_dist"]
    assert losses["loss"].item() == pytest.approx(expected.item())
    quality = F.l1_loss(out.score, batch[BATCH_MOS]) + PLCCLoss()(out.score, batch[BATCH_MOS])
    assert losses["loss_quality"].item() == pytest.approx(quality.item())
    labelled = batch[BATCH_DIST_TYPE] != -1
    ce = F.cross_entropy(out.dist_logits[labelled], batch[BATCH_DIST_TYPE][labelled])
    assert losses["loss_dist"].item() == pytest.approx(ce.item())
    assert losses["loss_hf"].item() == pytest.approx(F.l1_loss(out.hf_pred, out.hf_target).item())

    train, val, _ = loaders()
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(system, train, val)
    for key in ("train/loss", "train/loss_quality", "train/loss_hf", "train/loss_dist"):
        assert key in trainer.callback_metrics, key
    for key in ("val/srcc", "val/plcc", "val/krcc", "val/rmse", "val/plcc_fit", "val/srcc_best"):
        assert key in trainer.callback_metrics, key


def test_auxiliary_terms_off_with_zero_weight():
    system = make_system(lambda_hf=0.0, lambda_dist=0.0)
    batch = next(iter(DataLoader(NoiseDB(4, seed=5), batch_size=4)))
    losses = system.compute_losses(system(batch[BATCH_IMAGE]), batch)
    assert float(losses["loss_hf"]) == 0.0 and float(losses["loss_dist"]) == 0.0
    assert float(losses["loss"]) == pytest.approx(float(losses["loss_quality"]))


def test_training_raises_val_srcc_and_keeps_the_best_checkpoint(tmp_path):
    train, val, _ = loaders()
    system = make_system()
    # the untrained model's per-image SRCC, computed independently of the metric classes
    system.eval()
    with torch.no_grad():
        preds, mos = zip(*[(system.predict_images(b[BATCH_IMAGE]), b[BATCH_MOS]) for b in val])
    untrained = spearmanr(torch.cat(preds).numpy(), torch.cat(mos).numpy())[0]
    system.train()

    history = ValHistory()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/srcc", mode="max", save_top_k=1)
    trainer = make_trainer(tmp_path, epochs=6, callbacks=[history, ckpt])
    trainer.fit(system, train, val)

    assert max(history.srcc) > untrained + 0.2, (untrained, history.srcc)
    assert max(history.srcc) > 0.8, history.srcc
    assert float(trainer.callback_metrics["val/srcc_best"]) == pytest.approx(max(history.srcc), abs=1e-6)
    assert float(ckpt.best_model_score) == pytest.approx(max(history.srcc), abs=1e-6)
    assert system.best_val_metrics["srcc"] == pytest.approx(max(history.srcc), abs=1e-6)
    assert system.best_val_epoch == int(np.argmax(history.srcc))

    # the file really holds the best epoch's weights: re-validating it gives the best SRCC
    net, database = load_net_from_checkpoint(ckpt.best_model_path)
    assert database == DATABASE
    assert not net.training
    fresh = make_system(net=net)
    result = make_trainer(tmp_path).validate(fresh, val, verbose=False)[0]
    assert result["val/srcc"] == pytest.approx(max(history.srcc), abs=1e-5)


def test_cross_dataset_test_logs_one_metric_set_per_test_database(tmp_path):
    _, _, test = loaders(crops=3)
    other = DataLoader(NoiseDB(10, seed=9, crops=3), batch_size=4)
    system = make_system()
    system.test_set_names = ["contrast", "other_db"]  # set after construction, as the train entry does
    results = make_trainer(tmp_path).test(system, dataloaders=[test, other], verbose=False)
    # logged once at test epoch end, without a dataloader suffix: every result dict holds all sets
    expected = {
        f"test/{n}/{m}"
        for n in ("contrast", "other_db")
        for m in ("srcc", "plcc", "krcc", "rmse", "plcc_fit")
    }
    assert set(results[0]) == expected
    assert set(system.test_results) == {"contrast", "other_db"}
    assert system.test_results["other_db"]["n_images"] == 10

    # per-image predictions kept in dataset order, and equal to a direct crop-averaged forward pass
    rows = system.test_predictions["other_db"]
    assert rows["index"].tolist() == list(range(10))
    ds = other.dataset
    system.eval()
    with torch.no_grad():
        direct = system.net(torch.stack([ds[i][BATCH_IMAGE] for i in range(10)]).flatten(0, 1)).score
    assert np.allclose(rows["prediction"], direct.reshape(10, 3).mean(1).numpy(), atol=1e-5)
    assert np.allclose(rows["mos"], ds.mos.numpy(), atol=1e-6)
    srcc = spearmanr(rows["prediction"], rows["mos"])[0]
    assert results[1]["test/other_db/srcc"] == pytest.approx(srcc, abs=1e-5)


def test_too_few_test_set_names_is_a_clear_error(tmp_path):
    _, _, test = loaders()
    system = make_system(test_set_names=["only_one"])
    with pytest.raises(ValueError, match="2 test dataloaders but only 1"):
        make_trainer(tmp_path).test(system, dataloaders=[test, test], verbose=False)


def test_parameter_groups_lr_and_weight_decay(tmp_path):
    train, _, _ = loaders()
    system = make_system(lr=1e-3)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(system, train)
    opt = trainer.optimizers[0]
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    net = system.net
    assert {id(p) for p in by_name["backbone"]["params"]} == {id(net.conv.weight)}
    assert {id(p) for p in by_name["backbone_no_decay"]["params"]} == {id(net.conv.bias)}
    no_decay_head = {id(p) for p in by_name["head_no_decay"]["params"]}
    assert {id(net.norm.weight), id(net.norm.bias), id(net.score_head.bias)} <= no_decay_head
    assert id(net.score_head.weight) in {id(p) for p in by_name["head"]["params"]}
    assert by_name["backbone"]["weight_decay"] == 0.01 and by_name["head"]["weight_decay"] == 0.01
    assert (
        by_name["backbone_no_decay"]["weight_decay"] == 0.0
        and by_name["head_no_decay"]["weight_decay"] == 0.0
    )
    assert by_name["backbone"]["initial_lr"] == pytest.approx(0.5e-3)  # backbone_lr_mult = 0.5
    assert by_name["head"]["initial_lr"] == pytest.approx(1e-3)
    n_params = sum(1 for p in net.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params


def test_frozen_parameters_are_left_out(tmp_path):
    train, _, _ = loaders()
    system = make_system()
    system.net.conv.requires_grad_(False)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(system, train)
    ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(system.net.conv.weight) not in ids and id(system.net.score_head.weight) in ids


def test_warmup_cosine_schedule_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine_schedule(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    # after warm-up: 0.1 + 0.9 * 0.5 * (1 + cos(pi * (s - 2) / 8))
    for s in range(2, 10):
        assert lrs[s] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * (s - 2) / 8)))


def test_scheduler_built_per_step_from_estimated_stepping_batches(tmp_path):
    train, _, _ = loaders()  # 4 batches / epoch
    system = make_system(
        lr=1.0, scheduler=functools.partial(warmup_cosine_schedule, warmup_steps=0, min_lr_ratio=0.0)
    )
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.fit(system, train)
    sched = trainer.lr_scheduler_configs[0]
    assert sched.interval == "step"
    # 8 steps in total: after 8 scheduler steps the cosine reached its end
    assert trainer.optimizers[0].param_groups[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_non_finite_loss_names_step_and_terms(tmp_path):
    class NaNNet(TinyNet):
        def forward(self, x):
            out = super().forward(x)
            return out._replace(hf_pred=out.hf_pred * float("nan"))

    train, _, _ = loaders()
    system = make_system(net=NaNNet())
    with pytest.raises(FloatingPointError, match=r"global step 0 .*loss_quality=[0-9.]+, loss_hf=nan"):
        make_trainer(tmp_path, max_steps=1).fit(system, train)


def test_checkpoint_meta_and_wrong_files(tmp_path):
    system = make_system(model_cfg="_target_: " + MODEL_CFG["_target_"] + "\nwidth: 8\nnum_dist_types: 3\n")
    assert system.model_cfg == MODEL_CFG  # YAML text, as passed through hydra.utils.instantiate
    train, _, _ = loaders()
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(system, train)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=False)
    assert raw["mfe_iqa"] == {"model_cfg": MODEL_CFG, "database": DATABASE}
    net, _ = load_net_from_checkpoint(path)
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.allclose(net(x).score, system.net.eval()(x).score)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_net_from_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"format": "mfe_iqa.dan/1", "state_dict": {}}, tmp_path / "dan.pt")
    with pytest.raises(CheckpointFormatError, match="DAN pre-training export"):
        load_net_from_checkpoint(tmp_path / "dan.pt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        load_net_from_checkpoint(tmp_path / "text.ckpt")


def test_channels_last_changes_the_layout_not_the_training(tmp_path):
    train = DataLoader(NoiseDB(32, seed=1), batch_size=8, shuffle=False)
    systems, trainers = {}, {}
    for cl in (False, True):
        systems[cl] = make_system(channels_last=cl)  # the same seed: the same initial weights
        trainers[cl] = make_trainer(tmp_path / str(cl), max_steps=3)
        trainers[cl].fit(systems[cl], train)
    weight = systems[True].net.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert systems[False].net.conv.weight.is_contiguous()
    for (name, p), q in zip(systems[False].net.named_parameters(), systems[True].net.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)  # three AdamW steps later
    path = tmp_path / "cl.ckpt"
    trainers[True].save_checkpoint(path)
    net, _ = load_net_from_checkpoint(path)  # an ordinary (contiguous) network
    assert net.conv.weight.is_contiguous()
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(net(x).score, systems[True].net.eval()(x).score)


def test_instantiated_model_cfg_is_refused():
    with pytest.raises(TypeError, match="YAML text"):
        make_system(model_cfg=TinyNet())


def test_load_clears_pretrained_weight_paths(tmp_path):
    from mfe_iqa.systems.iqa import _clear_weight_sources

    cfg = {
        "_target_": "x",
        "qen": {"pretrained_path": "/nope.pth"},
        "dan": {"pretrained_ckpt": "/dan.pt", "a": 1},
    }
    assert _clear_weight_sources(cfg) == {
        "_target_": "x",
        "qen": {"pretrained_path": None},
        "dan": {"pretrained_ckpt": None, "a": 1},
    }


def test_wandb_gets_best_val_and_test_summary_scatter_and_table(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train, val, test = loaders()
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="mfe-iqa-test")
    try:
        system = make_system(test_set_names=["toy"])
        trainer = L.Trainer(
            default_root_dir=tmp_path, max_epochs=2, accelerator="cpu", logger=logger, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(system, train, val)
        trainer.test(system, dataloaders=test, verbose=False)
        summary = logger.experiment.summary
        assert summary["best_val/srcc"] == pytest.approx(system.best_val_metrics["srcc"])
        assert summary["best_val/epoch"] == system.best_val_epoch
        assert summary["test/toy/srcc"] == pytest.approx(system.test_results["toy"]["srcc"])
        assert summary["test/toy/scatter"]["_type"] == "image-file"
        assert summary["test/toy/predictions"]["_type"] == "table-file"
        run_dir = logger.experiment.dir  # offline run files
    finally:
        wandb.finish()
    media = list((tmp_path / "wandb").rglob("*.png")) + list((tmp_path / "wandb").rglob("*.table.json"))
    assert media, f"no scatter / table file under {run_dir}"


def test_frozen_dan_keeps_pretrained_statistics_through_a_lightning_fit(tmp_path):
    # Lightning (>= 2.2) never calls model.train() at the start of fit; it keeps each module's own mode and
    # restores it after validation. A frozen DAN must therefore be in eval mode from construction on, or its
    # batch-norm layers normalize with batch statistics and overwrite the pre-trained running statistics.
    torch.manual_seed(0)
    net = MFENet(
        qen={"variant": "van_b0"},
        dan={"backbone": "resnet10t", "num_dist_types": 3, "freeze": True},
        hfen={"stem_channels": 4, "channels": [8, 8, 16, 16]},
        head={"hidden_dims": [16]},
    )
    running = {k: v.clone() for k, v in net.dan.backbone.state_dict().items() if "running" in k}
    assert running
    train, val, _ = loaders()
    system = make_system(net=net)
    trainer = make_trainer(tmp_path, max_steps=3, limit_val_batches=1, val_check_interval=2)
    trainer.fit(system, train, val)
    assert trainer.global_step == 3
    bns = [m for m in net.dan.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert net.qen.training  # the rest of the network trains
    after = net.dan.backbone.state_dict()
    changed = [k for k, v in running.items() if not torch.equal(v, after[k])]
    assert changed == [], f"frozen DAN statistics changed: {changed[:3]}"


# ---------------------------------------------------------------------------------------------------------------
class _NoiseDataModule(L.LightningDataModule):
    """NoiseDB as a datamodule with what system.stats_head_init=ridge reads: items and eval_dataloader(items)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_db, self.val_db = NoiseDB(48, seed=1), NoiseDB(24, seed=2, crops=2)
        self.train_eval_db = NoiseDB(48, seed=1, crops=2)  # the training images, as evaluation crops
        self.train_items = [
            IQAItem(f"t{i}.png", float(m), float(m), f"t{i}") for i, m in enumerate(self.train_db.mos)
        ]
        self.val_items = [
            IQAItem(f"v{i}.png", float(m), float(m), f"v{i}") for i, m in enumerate(self.val_db.mos)
        ]
        self.has_val = True

    def eval_dataloader(self, items):
        db = self.train_eval_db if items == self.train_items else self.val_db
        assert items in (self.train_items, self.val_items)
        return DataLoader(db, batch_size=8)

    def train_dataloader(self):
        return DataLoader(self.train_db, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return self.eval_dataloader(self.val_items)


class _HeadAtTrainStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        head = pl_module.net.dan_stats
        self.weight, self.bias = head.weight.detach().clone(), head.bias.detach().clone()
        net = pl_module.net
        was = net.training
        net.eval()
        with torch.no_grad():
            views = torch.stack(
                [trainer.datamodule.val_db[i][BATCH_IMAGE] for i in range(24)]
            )  # (24, 2, 3, h, w)
            self.val_pred = head(net.dan(views.flatten(0, 1))[0]).view(24, 2).mean(1).numpy()
        net.train(was)


def _stats_mfenet(**kw) -> MFENet:
    torch.manual_seed(0)
    return MFENet(
        qen={"variant": "van_b0"},
        dan={"backbone": "resnet10t", "num_dist_types": 3},
        hfen={"stem_channels": 4, "channels": [8, 8, 16, 16]},
        head={"hidden_dims": [16]},
        dan_stats_head=True,
        **kw,
    )


def test_stats_head_ridge_init_is_the_linear_probe_stage_of_the_fit(tmp_path):
    dm = _NoiseDataModule()
    system = make_system(net=_stats_mfenet(), stats_head_init="ridge", stats_head_alphas=[1.0, 10.0, 100.0])
    seen = _HeadAtTrainStart()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, callbacks=[seen, ckpt], max_steps=2, limit_val_batches=1)
    trainer.fit(system, datamodule=dm)
    probe = system.stats_head_probe
    assert probe["n_train"] == 48 and probe["n_val"] == 24 and probe["alpha"] in (1.0, 10.0, 100.0)
    # before the first step the head already scores the val images: its SRCC (scipy) is the probe's val SRCC
    assert seen.weight.abs().sum() > 0
    assert spearmanr(seen.val_pred, dm.val_db.mos.numpy())[0] == pytest.approx(probe["val_srcc"], abs=1e-5)
    saved = torch.load(ckpt.last_model_path, map_location="cpu", weights_only=False)
    assert saved[CKPT_META_KEY]["stats_head_probe"]["alpha"] == probe["alpha"]
    # resuming the fit keeps the checkpoint's head: no second probe overwrites what was trained
    resumed = make_system(net=_stats_mfenet(), stats_head_init="ridge", stats_head_alphas=[1.0, 10.0, 100.0])
    seen2 = _HeadAtTrainStart()
    make_trainer(tmp_path, epochs=3, callbacks=[seen2], max_steps=5, limit_val_batches=1).fit(
        resumed, datamodule=dm, ckpt_path=ckpt.last_model_path
    )
    assert resumed.stats_head_probe is None
    torch.testing.assert_close(seen2.weight, saved["state_dict"]["net.dan_stats.weight"])


def test_stats_head_alpha_by_cv_on_the_training_images(tmp_path):
    dm = _NoiseDataModule()
    system = make_system(
        net=_stats_mfenet(), stats_head_init="ridge", stats_head_alphas=[1.0, 10.0, 100.0],
        stats_head_alpha_selection="cv", stats_head_cv_folds=4,
    )  # fmt: skip
    seen = _HeadAtTrainStart()
    make_trainer(tmp_path, callbacks=[seen], max_steps=1, limit_val_batches=1).fit(system, datamodule=dm)
    probe = system.stats_head_probe
    assert probe["selection"] == "cv4" and probe["n_train"] == 48 and probe["n_val"] == 24
    # val did not choose alpha but is reported: the SRCC (scipy) of the started head on the val images
    assert spearmanr(seen.val_pred, dm.val_db.mos.numpy())[0] == pytest.approx(probe["val_srcc"], abs=1e-5)


def test_stats_head_init_needs_the_head_and_a_known_mode():
    with pytest.raises(ValueError, match="model.dan_stats_head=true"):
        make_system(stats_head_init="ridge")  # TinyNet has no DAN-statistics head
    with pytest.raises(ValueError, match="stats_head_init must be one of"):
        make_system(net=_stats_mfenet(), stats_head_init="lstsq")
    with pytest.raises(ValueError, match="stats_head_alphas"):
        make_system(net=_stats_mfenet(), stats_head_init="ridge", stats_head_alphas=[])
    with pytest.raises(ValueError, match=r"stats_head_alpha_selection must be one of \('val', 'cv'\)"):
        make_system(net=_stats_mfenet(), stats_head_init="ridge", stats_head_alpha_selection="test")
    with pytest.raises(ValueError, match="stats_head_cv_folds >= 2"):
        make_system(net=_stats_mfenet(), stats_head_init="ridge", stats_head_cv_folds=1)
    # auto (a preset that trains several models): ridge where the head exists, nothing to start otherwise
    assert make_system(stats_head_init="auto").stats_head_init == "zero"
    assert make_system(net=_stats_mfenet(), stats_head_init="auto").stats_head_init == "ridge"

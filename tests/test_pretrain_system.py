"""DANPretrainModule pieces: k-NN accuracy against a brute-force count, the schedule, learning on a batch."""

from __future__ import annotations

import math
from functools import partial

import cv2
import pytest
import torch
from skimage import data

from mfe_iqa.data.pretrain import PretrainDataModule
from mfe_iqa.models.dan import DistortionAwareNetwork
from mfe_iqa.systems.dan_pretrain import DANPretrainModule, knn_accuracy, warmup_cosine


def _brute_force_knn(emb, labels, types, content, k, tau):
    """Plain loops: k most similar samples of other contents, exp(s / tau)-weighted votes."""
    z = torch.nn.functional.normalize(emb, dim=1)
    n = len(z)
    type_hits, type_total, class_hits = 0, 0, 0
    for i in range(n):
        cands = sorted(
            ((float(z[i] @ z[j]), j) for j in range(n) if content[j] != content[i]), key=lambda t: -t[0]
        )[:k]
        class_votes, type_votes = {}, {}
        for s, j in cands:
            w = math.exp(s / tau)
            class_votes[int(labels[j])] = class_votes.get(int(labels[j]), 0.0) + w
            type_votes[int(types[j])] = type_votes.get(int(types[j]), 0.0) + w
        class_hits += max(class_votes, key=class_votes.get) == int(labels[i])
        if types[i] >= 0:
            type_total += 1
            type_hits += max(type_votes, key=type_votes.get) == int(types[i])
    return type_hits / type_total, class_hits / n


def test_knn_accuracy_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    n = 60
    labels = torch.randint(0, 11, (n,), generator=g)
    types = torch.where(labels == 0, torch.tensor(-1), (labels - 1) // 5)
    content = torch.arange(n) % 3
    centers = torch.randn(11, 8, generator=g)
    emb = centers[labels] + 0.9 * torch.randn(n, 8, generator=g)
    got = knn_accuracy(emb, labels, types, content, k=5, temperature=0.1)
    want = _brute_force_knn(emb, labels, types, content, 5, 0.1)
    assert got == pytest.approx(want)
    assert 0.0 < want[1] < 1.0  # a non-trivial case
    perfect = knn_accuracy(centers[labels], labels, types, content, k=3)
    assert perfect == (1.0, 1.0)
    with pytest.raises(ValueError, match="two held-out images"):
        knn_accuracy(emb, labels, types, torch.zeros(n, dtype=torch.long))


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.001


@pytest.fixture(scope="module")
def tiny_batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = cv2.resize(getattr(data, name)(), (48, 40), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    dm = PretrainDataModule(
        folders=[str(folder)], num_val_images=1, types=["jpeg", "white_noise", "gaussian_blur"], crop_size=16,
        batch_size=16, steps_per_epoch=1, seed=3,
    )  # fmt: skip
    dm.setup()
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize(("grid", "stages"), [(0, None), (2, [0, 1, 2, 3])])
def test_a_few_steps_reduce_the_loss(tiny_batch, grid, stages):
    torch.manual_seed(0)
    system = DANPretrainModule(
        DistortionAwareNetwork("resnet10t"), optimizer=partial(torch.optim.AdamW, lr=2e-3), patch_grid=grid,
        feature_stages=stages, projection_dim=32,
    )  # fmt: skip
    opt = system.configure_optimizers()["optimizer"]  # no scheduler: no trainer needed
    x = tiny_batch["views"].flatten(0, 1)  # (32, 3, 16, 16)
    labels = tiny_batch["label"].repeat_interleave(2)
    losses = []
    for _ in range(8):
        z, zl = system.project(x, labels)
        assert z.shape == (32 * max(1, grid) ** 2, 32) and len(zl) == len(z)
        loss = system.loss_fn(z, zl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert system.loss_fn.last_anchors_without_positive == 0
    assert losses[-1] < 0.9 * losses[0], losses


def test_checkpoint_carries_the_backbone_name_and_bad_stages_are_refused():
    system = DANPretrainModule(
        DistortionAwareNetwork("resnet10t"), optimizer=partial(torch.optim.SGD, lr=0.1)
    )
    ckpt = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(ckpt)
    assert ckpt["mfe_iqa_dan"] == {"backbone": "resnet10t"}
    assert any(k.startswith("dan.backbone.") for k in ckpt["state_dict"])
    with pytest.raises(ValueError, match="feature_stages"):
        DANPretrainModule(DistortionAwareNetwork("resnet10t"), optimizer=None, feature_stages=[4])


def test_no_weight_decay_on_biases_and_norms():
    system = DANPretrainModule(
        DistortionAwareNetwork("resnet10t"), optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
    )
    decay, no_decay = system.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(system.parameters()))


def test_knn_with_a_bank_and_distorted_only_matches_brute_force():
    """Queries (is_bank False) vote by their nearest bank rows; distorted_only drops pristine rows on both sides."""
    g = torch.Generator().manual_seed(1)
    n = 90
    labels = torch.randint(0, 11, (n,), generator=g)
    types = torch.where(labels == 0, torch.tensor(-1), (labels - 1) // 5)
    content = torch.arange(n) % 5
    is_bank = content >= 2  # contents 0, 1: queries; 2, 3, 4: bank
    emb = torch.randn(11, 8, generator=g)[labels] + 0.9 * torch.randn(n, 8, generator=g)
    z = torch.nn.functional.normalize(emb, dim=1)
    for distorted_only in (False, True):
        keep = (types >= 0) if distorted_only else torch.ones(n, dtype=torch.bool)
        queries = [i for i in range(n) if not is_bank[i] and keep[i]]
        bank = [j for j in range(n) if is_bank[j] and keep[j]]
        type_hits = type_total = class_hits = 0
        for i in queries:
            near = sorted(((float(z[i] @ z[j]), j) for j in bank), key=lambda t: -t[0])[:5]
            cv, tv = {}, {}
            for s, j in near:
                cv[int(labels[j])] = cv.get(int(labels[j]), 0.0) + math.exp(s / 0.1)
                tv[int(types[j])] = tv.get(int(types[j]), 0.0) + math.exp(s / 0.1)
            class_hits += max(cv, key=cv.get) == int(labels[i])
            if types[i] >= 0:
                type_total += 1
                type_hits += max(tv, key=tv.get) == int(types[i])
        got = knn_accuracy(
            emb, labels, types, content, 5, 0.1, is_bank=is_bank, distorted_only=distorted_only
        )
        assert got == pytest.approx((type_hits / type_total, class_hits / len(queries)))


def test_mean_and_std_pooling_doubles_the_feature_and_stays_finite():
    system = DANPretrainModule(
        DistortionAwareNetwork("resnet10t"),
        optimizer=None,
        pooling=["mean", "std"],
        feature_stages=[0, 1, 2, 3],
        projection_dim=16,
    )
    system.eval()
    x = torch.rand(3, 3, 32, 32)  # the last stage is 1 x 1: its spatial std is 0, not NaN
    with torch.no_grad():
        p, g = system.pooled(x), system.pooled(x, grid=2)
    assert p.shape == (3, 2 * sum(system.dan.channels)) and torch.isfinite(p).all()
    assert g.shape == (3, 4, 2 * sum(system.dan.channels)) and torch.isfinite(g).all()
    assert system.head.net[0].in_features == p.shape[1]
    with pytest.raises(ValueError, match="pooling"):
        DANPretrainModule(DistortionAwareNetwork("resnet10t"), optimizer=None, pooling=["max"])

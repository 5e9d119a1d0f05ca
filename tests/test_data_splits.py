"""Content-aware splits: no leak for any synthetic database and any split index, determinism, split.csv round trip."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data_layouts import build_csiq, build_kadid, build_koniq, build_live, build_pipal, build_tid2013
from mfe_iqa.data.items import IQAItem
from mfe_iqa.data.readers import read_csiq, read_kadid10k, read_live, read_pipal, read_tid2013
from mfe_iqa.data.splits import (
    Split,
    SplitError,
    SplitSpec,
    check_no_leak,
    content_aware_split,
    count_split_csv,
    read_split_csv,
    write_split_csv,
)

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
SYNTHETIC = {
    "live": (build_live, read_live, "databaserelease2"),
    "csiq": (build_csiq, read_csiq, "CSIQ"),
    "tid2013": (build_tid2013, read_tid2013, "tid2013"),
    "kadid10k": (build_kadid, read_kadid10k, "kadid10k"),
    "pipal": (lambda root: build_pipal(root, refs=10), read_pipal, "PIPAL"),
}


@pytest.fixture(scope="module")
def synthetic_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    roots = {}
    for name, (build, _, folder) in SYNTHETIC.items():
        build(base / folder)
        roots[name] = base / folder
    return roots


def _parts_by_content(split: Split) -> dict[str, set[str]]:
    return {p: {i.content_id for i in items} for p, items in split.parts().items()}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_every_split_index_is_disjoint_by_reference(name, synthetic_roots):
    db = SYNTHETIC[name][1](synthetic_roots[name])
    n_contents = len({i.content_id for i in db.items})
    test_sets = []
    for index in range(10):
        split = content_aware_split(db.items, SplitSpec(index=index))
        parts = _parts_by_content(split)
        assert not (
            parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"]
        )
        assert sum(len(v) for v in split.parts().values()) == len(db.items)  # nothing lost, nothing doubled
        assert all(parts[p] for p in ("train", "val", "test"))
        assert len(parts["train"]) == n_contents - len(parts["val"]) - len(parts["test"])
        test_sets.append(frozenset(parts["test"]))
    assert len(set(test_sets)) >= 9  # different indices give different splits


def test_same_seed_same_split_and_ratio_counts(synthetic_roots):
    items = read_live(synthetic_roots["live"]).items
    a = content_aware_split(items, SplitSpec(index=3, seed=7))
    b = content_aware_split(items, SplitSpec(index=3, seed=7))
    c = content_aware_split(items, SplitSpec(index=3, seed=8))
    assert [i.path for i in a.test] == [i.path for i in b.test]
    assert _parts_by_content(a) != _parts_by_content(c)
    sizes = {p: len(v) for p, v in _parts_by_content(a).items()}
    assert sizes == {"train": 20, "val": 3, "test": 6}  # 29 refs at 70/10/20, rounded


def test_zero_val_ratio_gives_no_val_part(synthetic_roots):
    items = read_live(synthetic_roots["live"]).items
    split = content_aware_split(items, SplitSpec(ratios=(0.8, 0.0, 0.2)))
    assert split.val == [] and len(_parts_by_content(split)["test"]) == 6


@pytest.mark.parametrize("ratios", [(0.7, 0.2), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_ratios_are_rejected(ratios):
    with pytest.raises(SplitError, match="ratios"):
        SplitSpec.from_config({"index": 0, "seed": 1, "ratios": list(ratios), "file": None})


def test_unknown_split_key_is_rejected():
    with pytest.raises(SplitError, match="unknown split key"):
        SplitSpec.from_config({"index": 0, "fold": 2})


def test_split_csv_round_trip_and_mismatch(tmp_path, synthetic_roots):
    root = synthetic_roots["csiq"]
    items = read_csiq(root).items
    split = content_aware_split(items, SplitSpec(index=5))
    path = write_split_csv(tmp_path / "run" / "split.csv", split, root)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "content_id", "part"] and len(rows) == 866
    assert not rows[0]["path"].startswith("/")  # relative to the database root: portable across machines
    again = read_split_csv(path, items, root)
    for part in ("train", "val", "test"):
        assert [i.path for i in getattr(again, part)] == [i.path for i in getattr(split, part)]
    # a database that does not match the file: one error naming the differences
    with pytest.raises(SplitError, match=r"not an item of this database|not in the split file"):
        read_split_csv(path, items[:-3], root)
    # a hand-edited file that leaks a reference into two parts
    rows[0]["part"] = "test" if rows[0]["part"] != "test" else "train"
    with open(tmp_path / "leak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "content_id", "part"])
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SplitError, match="leak"):
        read_split_csv(tmp_path / "leak.csv", items, root)
    # counted without the database (reports): the parts of the split that wrote the file
    assert count_split_csv(path) == {p: len(getattr(split, p)) for p in ("train", "val", "test")}
    (tmp_path / "bad.csv").write_text("file,part\na.png,train\n")
    with pytest.raises(SplitError, match=r"bad\.csv: expected the header path,content_id,part"):
        count_split_csv(tmp_path / "bad.csv")


def test_check_no_leak_catches_shared_content():
    a = IQAItem("/x/a.png", 0.5, 50, "ref1")
    b = IQAItem("/x/b.png", 0.5, 50, "ref1")
    with pytest.raises(SplitError, match="ref1"):
        check_no_leak(Split([a], [], [b]))
    check_no_leak(Split([a, b], [], []))


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_data_configs_set_up_on_their_layout(name, synthetic_roots, tmp_path):
    """conf/data/<name>.yaml instantiates on a tree in the real layout; its num_dist_types fits the database."""
    cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    cfg.root = str(synthetic_roots[name])
    cfg.split = {"index": 2, "seed": 11, "ratios": [0.7, 0.1, 0.2], "file": None}
    cfg.output_dir = str(tmp_path)
    dm = instantiate(cfg)
    dm.setup("fit")
    parts = {p: {i.content_id for i in getattr(dm, f"{p}_items")} for p in ("train", "val", "test")}
    assert not (
        parts["train"] & parts["test"] or parts["train"] & parts["val"] or parts["val"] & parts["test"]
    )
    assert dm.has_val and (tmp_path / "split.csv").is_file()
    assert dm.info.num_dist_types == cfg.num_dist_types


def test_koniq_official_split_through_the_datamodule(tmp_path):
    from mfe_iqa.data.datamodules import Koniq10kDataModule

    root = tmp_path / "koniq10k"
    truth = build_koniq(root)
    dm = Koniq10kDataModule(root, use_official_split=True, output_dir=tmp_path / "run")
    dm.setup()
    assert {Path(i.path).name for i in dm.val_items} == {
        n for n, s in truth["sets"].items() if s == "validation"
    }
    assert len(dm.train_items) == 28 and len(dm.test_items) == 8
    assert "official" in dm.split_source

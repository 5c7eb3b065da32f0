"""The splits keep an image's copies and a patient's images on one side (the pitfall
ANCHORS.md names: one image's copies on both sides of the split), and leave a set with
neither on its plain stratified split."""
from __future__ import annotations

import numpy as np

from medsentry_training import datasets


def _write(root, folder: str, files: dict) -> list:
    for name, data in files.items():
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(files)


def test_identical_files_and_one_patients_images_share_a_group(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SHARED_DATA", str(tmp_path))
    files = _write(tmp_path, datasets.CHEST_XRAY.folder, {
        "images/test/NORMAL/NORMAL2-IM-0095-0001.jpeg": b"same bytes",
        "images/test/NORMAL/NORMAL2-IM-0096-0001.jpeg": b"same bytes",
        "images/test/NORMAL/IM-0036-0001.jpeg": b"a",
        "images/test/PNEUMONIA/person78_bacteria_382.jpeg": b"b",
        "images/test/PNEUMONIA/person78_bacteria_383.jpeg": b"c",
        "images/test/PNEUMONIA/person109_bacteria_512.jpeg": b"d",
    })
    g = dict(zip(files, datasets.groups(datasets.CHEST_XRAY, files)))
    assert g["images/test/NORMAL/NORMAL2-IM-0095-0001.jpeg"] == g["images/test/NORMAL/NORMAL2-IM-0096-0001.jpeg"]
    assert g["images/test/PNEUMONIA/person78_bacteria_382.jpeg"] == g["images/test/PNEUMONIA/person78_bacteria_383.jpeg"]
    assert len(set(g.values())) == 4


def test_patients_of_every_name_form_and_chains_of_copies_join(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SHARED_DATA", str(tmp_path))
    files = _write(tmp_path, datasets.CHEST_XRAY.folder, {
        # One patient, different bytes (the real set has such pairs).
        "images/test/NORMAL/IM-0033-0001.jpeg": b"p",
        "images/test/NORMAL/IM-0033-0001-0001.jpeg": b"q",
        # IM-0036 and NORMAL2-IM-0036 are different patients.
        "images/test/NORMAL/IM-0036-0001.jpeg": b"r",
        "images/test/NORMAL/NORMAL2-IM-0036-0001.jpeg": b"s",
        # A chain: person5's two images differ, the second is a copy of NORMAL2-IM-0001's.
        "images/test/PNEUMONIA/person5_virus_10.jpeg": b"t",
        "images/test/PNEUMONIA/person5_virus_11.jpeg": b"u",
        "images/test/NORMAL/NORMAL2-IM-0001-0001.jpeg": b"u",
    })
    g = dict(zip((f.split("/")[-1] for f in files), datasets.groups(datasets.CHEST_XRAY, files)))
    assert g["IM-0033-0001.jpeg"] == g["IM-0033-0001-0001.jpeg"]
    assert g["IM-0036-0001.jpeg"] != g["NORMAL2-IM-0036-0001.jpeg"]
    assert g["person5_virus_10.jpeg"] == g["person5_virus_11.jpeg"] == g["NORMAL2-IM-0001-0001.jpeg"]
    assert len(set(g.values())) == 4


def test_a_set_of_distinct_files_keeps_its_stratified_split(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SHARED_DATA", str(tmp_path))
    files = _write(tmp_path, datasets.DERMOSCOPY.folder, {f"images/test/ISIC_{i:07d}.jpg": bytes([i]) for i in range(20)})
    assert datasets.groups(datasets.DERMOSCOPY, files) is None


def test_grouped_split_never_puts_a_group_on_both_sides():
    rng = np.random.default_rng(3)
    group = np.array([f"g{rng.integers(0, 60):03d}" for _ in range(400)])
    first = {}
    y = np.array([first.setdefault(g, int(rng.integers(0, 3))) for g in group])  # one class per group
    rest, held = datasets.grouped_split(y, group, 0.5, 1)
    assert not set(group[rest]) & set(group[held])
    assert len(rest) + len(held) == len(y)


def test_the_adversarial_split_moves_whole_groups(monkeypatch):
    """advcommon.make_split (what the attack stage writes as AdvTrain/AdvTest) uses the groups."""
    from medsentry_training import advcommon
    rng = np.random.default_rng(5)
    group = np.array([f"g{rng.integers(0, 80):03d}" for _ in range(300)])
    first = {}
    y = np.array([first.setdefault(g, int(rng.integers(0, 2))) for g in group])
    files = [f"f{i:04d}.png" for i in range(len(y))]
    monkeypatch.setattr(datasets, "load_split", lambda spec, split: (np.zeros((len(y), 1, 2, 2), np.float32), y, files))
    monkeypatch.setattr(datasets, "groups", lambda spec, f: group)
    split, *_ = advcommon.make_split(datasets.CHEST_XRAY, None)
    assert not set(group[split["train"]]) & set(group[split["test"]])
    assert len(split["train"]) + len(split["test"]) == len(y)

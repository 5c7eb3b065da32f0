"""Attack records: the attack stage's writer (attacks.Stage.save) and the one loader
(records.AttackRecord), on a tiny npz in the record format, and the evaluation tables that
read records by attribute."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from medsentry_training import attacks, evaluate, nets, records


def tiny_stage(adir) -> attacks.Stage:
    """An attacks.Stage with just what `save` needs (no data set, no checkpoints)."""
    st = attacks.Stage.__new__(attacks.Stage)
    torch.manual_seed(0)
    st.models = {"hardened": nets.Normalized(nets.SimpleCNN(1, 2, width=4), [0.5], [0.25]).eval()}
    st.y = np.array([0, 1, 0, 1, 1, 0], dtype=np.int64)
    st.adir, st.summary, st.times = str(adir), {}, {}
    return st


def test_attack_records_load_into_the_dataclass(tmp_path):
    st = tiny_stage(tmp_path)
    x = torch.rand(4, 1, 8, 8)
    idx, sp = np.array([0, 2, 3, 5]), np.array([0, 0, 1, 1], np.uint8)
    pred_clean = np.array([0, 0, 1, 1])
    st.save("hardened", "pgd20", "linf_4", idx, sp, x, pred_clean, None, {"steps": 20}, {"hardened": "aa"}, 1.5)
    st.save("hardened", "uap_to1", "l2_z4", idx, sp, x, pred_clean, 1, {"xi": 0.5, "subset_per_half": 2},
            {"hardened": "aa"}, 2.0, {"uap": np.zeros((1, 1, 8, 8), np.float32)})
    st.save("hardened", "fgsm", "linf_1", idx, sp, x, pred_clean, None, {}, {"hardened": "old"}, 1.0)
    recs = records.load_all(str(tmp_path), shas={"hardened": "aa"})  # the fgsm record is stale: left out
    assert [(r.file, r.attack, r.budget, r.target_model) for r in recs] == [
        ("hardened__pgd20__linf_4.npz", "pgd20", "linf_4", "hardened"),
        ("hardened__uap_to1__l2_z4.npz", "uap_to1", "l2_z4", "hardened")]
    pgd, uap = recs
    assert np.array_equal(pgd.index, idx) and np.array_equal(pgd.split, sp) and pgd.x_adv.dtype == np.float32
    assert np.array_equal(pgd.label, st.y[idx]) and np.array_equal(pgd.pred_clean, pred_clean)
    assert np.array_equal(pgd.success, pgd.pred_adv != pgd.label) and (pgd.target_class == -1).all()
    assert pgd.uap is None and pgd.apgd_success is None and pgd.meta["steps"] == 20 and pgd.shas == {"hardened": "aa"}
    assert uap.uap.shape == (1, 1, 8, 8) and (uap.target_class == 1).all() and uap.meta["xi"] == 0.5
    assert np.array_equal(uap.success, uap.pred_adv == 1)
    assert records.load_all(str(tmp_path), target="standard") == []
    assert len(records.load_all(str(tmp_path))) == 3
    assert [r.attack for r in records.load_all(str(tmp_path), attacks=("pgd20", "fgsm"))] == ["fgsm", "pgd20"]


def record(attack, budget, split, label, pred_clean, pred_adv, target=-1, **kw) -> records.AttackRecord:
    split, label, pred_clean, pred_adv = map(np.array, (split, label, pred_clean, pred_adv))
    n = len(split)
    tc = np.full(n, target)
    success = pred_adv == tc if target >= 0 else pred_adv != label
    return records.AttackRecord(
        file=f"hardened__{attack}__{budget}.npz", target_model="hardened", attack=attack, budget=budget, shas={},
        x_adv=np.zeros((n, 1, 2, 2), np.float32), index=np.arange(n), split=split, label=label,
        pred_clean=pred_clean, pred_adv=pred_adv, target_class=tc, success=success, **kw)


def test_evaluation_tables_read_records_by_attribute(tmp_path):
    pgd = record("pgd20", "linf_4", [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0])
    aa = record("aa_lite", "linf_4", [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [1, 0, 1, 0],
                apgd_success=np.array([True, False, False, False]))
    to1 = record("uap_to1", "l2_z4", [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0], target=1,
                 meta={"xi": 0.25})
    attacked, pos = evaluate.positives(pgd)
    assert attacked.tolist() == [False, True, True, False] and pos.tolist() == [False, True, False, False]
    attacked, pos = evaluate.positives(to1)  # targeted: images of the target class do not count
    assert attacked.tolist() == [True, True, False, False] and pos.tolist() == [True, True, False, False]
    assert evaluate.detected_rows([pgd, aa, to1]) == [pgd, to1]
    robust = evaluate.robust_tables([pgd, aa], None)
    assert robust["hardened"]["linf_4"] == {"pgd20": 1 / 3, "aa_lite": 0.5, "apgd_ce": 0.75}
    u = record("uap", "l2_z4", [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 0], meta={"xi": 0.5})
    uap = evaluate.uap_table([to1, u], ["NORMAL", "PNEUMONIA"])
    row = [r for r in uap if r["model"] == "hardened" and r["norm"] == "l2" and r["zeta"] == 0.04][0]
    assert row["targeted_success_PNEUMONIA"] == 0.75 and row["xi"] == 0.5 and row["fooling_rate"] == 2 / 3


def test_a_file_without_the_record_arrays_is_refused(tmp_path):
    np.savez(os.path.join(tmp_path, "x.npz"), meta=np.array(json.dumps(
        {"target_model": "hardened", "attack": "a", "budget": "b", "shas": {}})), x_adv=np.zeros(1))
    try:
        records.load_all(str(tmp_path))
    except ValueError as e:
        assert "not an attack record" in str(e)
    else:
        raise AssertionError("loaded a file without index/split/...")

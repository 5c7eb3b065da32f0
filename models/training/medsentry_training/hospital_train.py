"""Stand-in for a hospital's own classifier: a torchvision ResNet-18 at 224 px, trained the
ordinary way (no adversarial training) and exported by torch to ONNX, so that the `fit`
command can be proven on a network this pipeline did not design.

    python -m medsentry_training.hospital_train [--epochs 12] [--out work/hospital]

ResNet-18 rather than DenseNet-121 or ResNet-50 because of CPU time: on 2 cores a batch of
32 at 224 px costs 2.4 s per training step for ResNet-18 against 6-9 s for DenseNet-121
(about 7 against 17 minutes per epoch of the 5,216 training images).

The recipe is what a team would write from torchvision's tutorials: 3-channel input (the
grey X-ray repeated), ImageNet mean/std applied *outside* the graph (by the team's own
preprocessing, so `fit` is told it), AdamW with cosine decay, class-weighted cross-entropy,
random shifts and contrast jitter; the epoch with the best validation loss on a stratified
10 % of the training set is kept. The official test set is only scored at the end.

Resumable: every epoch writes OUT/last.pt (weights, optimiser, scheduler, history); a rerun
continues from it. The end product is OUT/resnet18_224.onnx (input `pixel_values`, NCHW
float32, output `output`, logits) and OUT/train_log.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import datasets

torch.set_num_threads(int(os.environ.get("MEDSENTRY_TORCH_THREADS", "2")))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 224


def load_uint8(split: str):
    """The chest X-ray split at 224 px as uint8 (N, 224, 224) (the images are 224 px squares
    with three equal channels, so grey = any channel, exactly), cached in work/."""
    cache = os.path.join(datasets.WORK, f"chest224_{split}_u8.npz")
    if os.path.exists(cache):
        z = np.load(cache)
        return z["x"], z["y"]
    spec = datasets.CHEST_XRAY
    x, y, _ = datasets.load_split(datasets.DatasetSpec(**{**spec.__dict__, "size": SIZE, "name": "chest224"}), split)
    xu = np.clip(np.rint(x[:, 0] * 255), 0, 255).astype(np.uint8)
    np.savez(cache, x=xu, y=y)
    os.remove(os.path.join(datasets.WORK, f"chest224_{split}_{SIZE}.npz"))  # the float copy is 1 GB
    return xu, y


def to_input(xu: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> the graph's input: 3 equal channels, ImageNet-normalised."""
    x = torch.from_numpy(xu).float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(xu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shift up to 16 px (edge padding) and +-15 % contrast, +-10 % brightness."""
    n = len(xu)
    pad = np.pad(xu, ((0, 0), (16, 16), (16, 16)), mode="edge")
    out = np.empty_like(xu)
    for i in range(n):
        oy, ox = rng.integers(0, 33, 2)
        out[i] = pad[i, oy:oy + SIZE, ox:ox + SIZE]
    c = rng.uniform(0.85, 1.15, (n, 1, 1))
    b = rng.uniform(-0.1, 0.1, (n, 1, 1)) * 255
    return np.clip((out.astype(np.float32) - 128) * c + 128 + b, 0, 255).astype(np.uint8)


def evaluate(net, xu, y, batch=64):
    net.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(xu), batch):
            logits.append(net(to_input(xu[i:i + batch])))
    lo = torch.cat(logits)
    pred = lo.argmax(1).numpy()
    loss = float(F.cross_entropy(lo, torch.from_numpy(y)))
    acc = float((pred == y).mean())
    sens = float((pred[y == 1] == 1).mean())
    spec = float((pred[y == 0] == 0).mean())
    return {"loss": round(loss, 5), "accuracy": round(acc, 5), "sensitivity": round(sens, 5), "specificity": round(spec, 5)}


def write_labels_csv(path: str) -> str:
    """The official test images as a hospital would list them for `fit`: file (relative to
    the test folder), label, patient. Returns the folder the paths are relative to."""
    import csv
    root = os.path.join(datasets.SHARED_DATA, "chest_xray_kermany", "images", "test")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "patient"])
        for c in ("NORMAL", "PNEUMONIA"):
            for n in sorted(os.listdir(os.path.join(root, c))):
                w.writerow([f"{c}/{n}", c, datasets.kermany_patient(n)])
    return root


def main(argv=None):
    import torchvision
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(datasets.WORK, "hospital"))
    ap.add_argument("--labels-csv", action="store_true", help="only write OUT/labels_test.csv (fit's --csv) and exit")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.labels_csv:
        print(write_labels_csv(os.path.join(args.out, "labels_test.csv")))
        return
    xu, y = load_uint8("train")
    rest, val = datasets.stratified_split(y, 0.10, 0)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    steps_per_epoch = (len(rest) + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    counts = np.bincount(y[rest], minlength=2)
    weight = torch.tensor(len(rest) / (2 * counts), dtype=torch.float32)
    last = os.path.join(args.out, "last.pt")
    state = {"epoch": 0, "history": [], "best": None}
    if os.path.exists(last):
        ck = torch.load(last, weights_only=False)
        net.load_state_dict(ck["net"]); opt.load_state_dict(ck["opt"]); sched.load_state_dict(ck["sched"])
        state = ck["state"]
        print(f"[resume] from epoch {state['epoch']}", flush=True)
    for epoch in range(state["epoch"], args.epochs):
        rng = np.random.default_rng(1000 + epoch)
        order = rng.permutation(rest)
        net.train()
        t0, total = time.time(), 0.0
        for s in range(steps_per_epoch):
            idx = order[s * args.batch:(s + 1) * args.batch]
            xb = to_input(augment(xu[idx], rng))
            loss = F.cross_entropy(net(xb), torch.from_numpy(y[idx]), weight=weight)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            total += float(loss) * len(idx)
            if s % 20 == 0:
                print(f"epoch {epoch + 1} step {s}/{steps_per_epoch} loss {float(loss):.4f} {time.time() - t0:.0f}s", flush=True)
        v = evaluate(net, xu[val], y[val])
        entry = {"epoch": epoch + 1, "train_loss": round(total / len(rest), 5), "val": v, "seconds": round(time.time() - t0, 1)}
        state["history"].append(entry)
        print(f"[epoch] {json.dumps(entry)}", flush=True)
        if state["best"] is None or v["loss"] < state["best"]["val"]["loss"]:
            state["best"] = entry
            torch.save(net.state_dict(), os.path.join(args.out, "best.pt"))
        state["epoch"] = epoch + 1
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "state": state}, last + ".tmp")
        os.replace(last + ".tmp", last)
    net.load_state_dict(torch.load(os.path.join(args.out, "best.pt")))
    net.eval()
    xt, yt = load_uint8("test")
    test = evaluate(net, xt, yt)
    print(f"[test] best epoch {state['best']['epoch']}: {json.dumps(test)}", flush=True)
    onnx_path = os.path.join(args.out, "resnet18_224.onnx")
    net = net.to(memory_format=torch.contiguous_format)
    torch.onnx.export(net, torch.zeros(1, 3, SIZE, SIZE), onnx_path, input_names=["pixel_values"], output_names=["output"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False)
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"arch": "torchvision resnet18", "size": SIZE, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                   "history": state["history"], "best": state["best"], "official_test": test}, f, indent=1)
    print(f"[done] {onnx_path}", flush=True)


if __name__ == "__main__":
    main()

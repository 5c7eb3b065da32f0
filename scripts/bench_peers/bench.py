"""medsentry side by side with KServe's ModelServer, MLServer and bare ONNX Runtime.

Run by scripts/bench-peers.sh in the driver venv (tritonclient, numpy, onnxruntime); the
peers run in their own venvs. For each model size it starts, on free loopback ports,
`medsentry serve` (one bundle, --intra-threads 2; with --cascade a second one with
`cascade = true`), KServe's ModelServer and MLServer (kserve_model.py, mlserver_model.py:
the same classifier.onnx, one onnxruntime session with 2 intra-op threads each), waits
for each to answer ServerReady, checks that every server gives the same answer on the same
tensors, then drives all of them with the same tritonclient.grpc load: C callers (one
thread and one client each) at batch 1 for C in 1, 8, 32, then one caller at batch 8, and
the same levels through an in-process onnxruntime InferenceSession (intra_op_num_threads=2,
same threads, same batch: "bare ORT"). Levels and servers are interleaved within a repeat
(the order rotates each repeat) so a slow spell of a shared machine falls on all of them.
Each level also reads the CPU time of the server's process tree and of this process
(cpu.py) and reports CPU milliseconds per image, which a busy machine moves far less than
images/s. Everything it started is stopped on exit, Ctrl-C and SIGTERM included.

The tensors are real test images in model space ([0, 1] intensities before mean/std, the
bundle's reference.json), the same bytes for every server. medsentry normalises and screens
them itself; the peers' model classes normalise with the bundle's mean/std and answer logits.
"""

import argparse
import datetime
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

import cpu

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BENCH_DIR = REPO / "target" / "bench-peers"

# Model size -> bundle. The 224 px rows use the ResNet-18 bundle fitted as a stranger's model.
BUNDLES = {
    64: REPO / "models" / "chest-xray-pneumonia",
    224: REPO / "models" / "chest-xray-resnet18-224",
}
# Images per level (batch 8 sends a eighth as many calls) for a full run and for --quick.
DEFAULT_IMAGES = {64: 2000, 224: 200}
QUICK_IMAGES = {64: 320, 224: 48}
LEVELS = [(1, 1), (8, 1), (32, 1), (1, 8)]  # (callers, batch)
THREADS = 2  # ONNX Runtime intra-op threads, everywhere

STARTED = []  # subprocess.Popen objects (each the leader of its own process group)
PIDFILE = None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, argv, logdir, env=None, cwd=None):
    logf = open(logdir / f"{name}.log", "wb")
    proc = subprocess.Popen(
        argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group: MLServer's workers go with it
    )
    proc.bench_name = name
    proc.bench_log = logdir / f"{name}.log"
    STARTED.append(proc)
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def stop_all():
    procs = [p for p in STARTED if p.poll() is None]
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in STARTED:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # stragglers in the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    STARTED.clear()


STOPPING = []


def on_signal(signum, _frame):
    if STOPPING:  # a second signal (Ctrl-C reaches the shell script and the driver alike)
        return
    STOPPING.append(signum)
    log(f"bench-peers: signal {signum}, stopping the servers it started")
    stop_all()
    os._exit(128 + signum)


def tail(path, n=25):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def wait_ready(proc, url, model, timeout_s):
    client = grpcclient.InferenceServerClient(url=url)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.bench_name} exited with {proc.returncode}:\n{tail(proc.bench_log)}"
            )
        try:
            if client.is_server_ready(client_timeout=2) and client.is_model_ready(
                model, client_timeout=2
            ):
                meta = client.get_server_metadata(client_timeout=2)
                client.close()
                return f"{meta.name} {meta.version}".strip()
        except Exception as e:  # not listening yet
            last = e
        time.sleep(0.5)
    client.close()
    raise RuntimeError(
        f"{proc.bench_name} not ready after {timeout_s} s ({last}):\n{tail(proc.bench_log)}"
    )


def pkg_versions(python, packages):
    code = (
        "import importlib.metadata as m, sys\n"
        "print(' '.join(p + '==' + m.version(p) for p in sys.argv[1:]))"
    )
    try:
        return subprocess.run(
            [python, "-c", code, *packages], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except Exception as e:
        return f"unknown ({e})"


# ---------------------------------------------------------------- bundle, tensors


class Bundle:
    def __init__(self, path: Path):
        self.path = path
        meta = tomllib.loads((path / "bundle.toml").read_text())
        self.name = meta["name"]
        inp = meta["input"]
        self.shape = [int(inp["channels"]), int(inp["height"]), int(inp["width"])]
        self.mean = [float(v) for v in inp["mean"]]
        self.std = [float(v) for v in inp["std"]]
        outs = meta["outputs"]
        self.input_name = outs.get("input", "input")
        self.output_name = outs.get("logits", "logits")
        self.max_batch = int(meta.get("max_batch", 32))
        self.onnx = path / "classifier.onnx"
        fused = path / "detector_fused.json"
        try:
            self.has_cascade = "cascade" in json.loads(fused.read_text())
        except (OSError, ValueError):
            self.has_cascade = False
        ref = json.loads((path / "reference.json").read_text())
        self.pixels = np.stack(
            [np.asarray(it["pixels"], dtype=np.float32).reshape(self.shape) for it in ref["items"]]
        )
        self.ref_probs = np.asarray([it["probabilities"] for it in ref["items"]], dtype=np.float64)

    def normalise(self, x):
        m = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((x - m) / s).astype(np.float32)

    def batches(self, batch):
        """The tensors the callers cycle through at this batch size (the same for every server)."""
        k = len(self.pixels)
        groups = max(k, 8)
        idx = [[(g * batch + j) % k for j in range(batch)] for g in range(groups)]
        return [np.ascontiguousarray(self.pixels[i]) for i in idx]


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def output_array(result, name):
    """An output from raw_output_contents or typed contents (MLServer may answer typed)."""
    arr = result.as_numpy(name)
    if arr is not None and arr.size:
        return arr
    for out in result.get_response().outputs:
        if out.name == name:
            return np.asarray(out.contents.fp32_contents, dtype=np.float32).reshape(list(out.shape))
    return None


# ---------------------------------------------------------------- targets


class OrtTarget:
    """Bare ONNX Runtime in this process: callers call session.run directly."""

    kind = "ort"

    def __init__(self, bundle: Bundle):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(bundle.onnx), opts, providers=["CPUExecutionProvider"]
        )
        self.bundle = bundle
        self.name = "bare ORT"
        self.pid = None  # runs in the driver's own process

    def caller(self, batch):
        xs = [self.bundle.normalise(x) for x in self.bundle.batches(batch)]
        sess, out, inp = self.session, [self.bundle.output_name], self.bundle.input_name

        def call(i):
            sess.run(out, {inp: xs[i % len(xs)]})

        return call, lambda: None

    def answer(self, x):
        (logits,) = self.session.run([self.bundle.output_name], {self.bundle.input_name: self.bundle.normalise(x)})
        return softmax(logits)


class GrpcTarget:
    """An OIP gRPC server driven through tritonclient.grpc, one client per caller."""

    kind = "grpc"

    def __init__(self, name, url, bundle: Bundle, probs_output=None):
        self.name = name
        self.url = url
        self.bundle = bundle
        self.probs_output = probs_output  # medsentry answers probabilities, the peers logits
        self.pid = None  # the server process, once started (its CPU time is read per level)

    def _inputs(self, x):
        inp = grpcclient.InferInput(self.bundle.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return [inp]

    def caller(self, batch):
        client = grpcclient.InferenceServerClient(url=self.url)
        reqs = [self._inputs(x) for x in self.bundle.batches(batch)]
        model = self.bundle.name

        def call(i):
            client.infer(model, reqs[i % len(reqs)], client_timeout=60)

        return call, client.close

    def answer(self, x):
        client = grpcclient.InferenceServerClient(url=self.url)
        try:
            res = client.infer(self.bundle.name, self._inputs(x), client_timeout=60)
        finally:
            client.close()
        if self.probs_output:
            return np.asarray(output_array(res, self.probs_output), dtype=np.float64)
        return softmax(output_array(res, self.bundle.output_name))


# ---------------------------------------------------------------- load


def measure(target, callers, batch, images, max_seconds):
    """One level: `callers` threads, each with its own client, share `images // batch` calls."""
    n_calls = max(1, images // batch)
    # Warm-up, not timed: every caller's connection open, then about a tenth of the level.
    warm_calls = max(callers, min(n_calls // 10, 200))
    warm_per_thread = max(1, -(-warm_calls // callers))
    made = [target.caller(batch) for _ in range(callers)]
    counter = itertools.count()
    lats = [[] for _ in range(callers)]
    errors = []
    clock = {}

    def go():
        clock["cpu"] = cpu.snapshot(target.pid)
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + max_seconds

    barrier = threading.Barrier(callers, action=go)

    def worker(k):
        call = made[k][0]
        try:
            for j in range(warm_per_thread):
                call(j + k)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        barrier.wait()
        out = lats[k]
        while not errors:
            i = next(counter)
            if i >= n_calls or time.perf_counter() > clock["deadline"]:
                break
            t0 = time.perf_counter()
            try:
                call(i + k)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                break
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    cpu_after = cpu.snapshot(target.pid)
    for _, close in made:
        try:
            close()
        except Exception:
            pass
    if errors:
        raise RuntimeError(f"{target.name}: {errors[0]}")
    lat = np.concatenate([np.asarray(l) for l in lats]) * 1e3
    wall = end - clock["start"]
    done = int(lat.size)
    server_ms, driver_ms = cpu.per_image_ms(clock["cpu"], cpu_after, max(1, done * batch))
    return {
        "calls": done,
        "images": done * batch,
        "seconds": round(wall, 4),
        "images_per_s": round(done * batch / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "truncated": done < n_calls,
        # Bare ONNX Runtime runs in the driver: its CPU is the driver's.
        "server_cpu_ms_per_image": round(server_ms if server_ms is not None else driver_ms, 4),
        "client_cpu_ms_per_image": None if server_ms is None else round(driver_ms, 4),
    }


def level_name(callers, batch):
    return f"C={callers}, batch {batch}"


def summarise(runs):
    ips = [r["images_per_s"] for r in runs]
    order = sorted(range(len(runs)), key=lambda i: ips[i])
    med = runs[order[(len(runs) - 1) // 2]]  # the median run (the lower one of an even count)
    return {
        "truncated": any(r["truncated"] for r in runs),
        "images_per_s": med["images_per_s"],
        "min": min(ips),
        "max": max(ips),
        "p50_ms": med["p50_ms"],
        "p99_ms": med["p99_ms"],
        "server_cpu_ms_per_image": statistics.median(r["server_cpu_ms_per_image"] for r in runs),
        "client_cpu_ms_per_image": None if runs[0]["client_cpu_ms_per_image"] is None
        else statistics.median(r["client_cpu_ms_per_image"] for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------- servers


def start_servers(bundle, size, args, rundir, versions):
    """Start medsentry (and its cascade twin), KServe and MLServer for this bundle."""
    targets = []
    pending = []
    models_dir = rundir / f"models-{size}"
    models_dir.mkdir()
    (models_dir / bundle.name).symlink_to(bundle.path.resolve(), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSENTRY_")}

    ms_variants = [("medsentry", None)]
    if args.cascade:
        if bundle.has_cascade:
            policy = rundir / f"cascade-{size}.toml"
            policy.write_text(f'[models."{bundle.name}"]\ncascade = true\n')
            ms_variants.append(("medsentry cascade", policy))
        else:
            log(f"bench-peers: {bundle.name} has no cascade (detector_fused.json); no cascade column at {size} px")
    for name, policy in ms_variants:
        grpc_port, admin_port = free_port(), free_port()
        argv = [
            str(args.medsentry), "serve",
            "--models-dir", str(models_dir),
            "--listen", f"127.0.0.1:{grpc_port}",
            "--admin-listen", f"127.0.0.1:{admin_port}",
            "--intra-threads", str(THREADS),
        ]
        if policy:
            argv += ["--policy", str(policy)]
        proc = start(f"{name.replace(' ', '-')}-{size}", argv, rundir, env=env)
        url = f"127.0.0.1:{grpc_port}"
        pending.append((proc, url))
        targets.append(GrpcTarget(name, url, bundle, probs_output="probabilities"))

    if "kserve" in args.peers:
        grpc_port, http_port = free_port(), free_port()
        kenv = dict(os.environ, KSERVE_LOGLEVEL="WARNING")
        argv = [
            str(BENCH_DIR / "kserve" / "bin" / "python"), str(HERE / "kserve_model.py"),
            "--model_name", bundle.name,
            "--grpc_port", str(grpc_port), "--http_port", str(http_port),
            "--enable_latency_logging", "false",
            "--onnx", str(bundle.onnx), "--input", bundle.input_name,
            "--output", bundle.output_name,
            "--mean", json.dumps(bundle.mean), "--std", json.dumps(bundle.std),
            "--threads", str(THREADS),
        ]
        proc = start(f"kserve-{size}", argv, rundir, env=kenv)
        url = f"127.0.0.1:{grpc_port}"
        pending.append((proc, url))
        targets.append(GrpcTarget("KServe", url, bundle))

    if "mlserver" in args.peers:
        root = rundir / f"mlserver-{size}"
        (root / bundle.name).mkdir(parents=True)
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        (root / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "debug": False,
            # gRPC's default 4 MiB would refuse a 224 px batch of 8 (4.8 MB); KServe's
            # ModelServer and medsentry accept far more by default.
            "grpc_max_message_length": 64 * 1024 * 1024,
            "parallel_workers": args.mlserver_workers,
        }, indent=2))
        (root / bundle.name / "model-settings.json").write_text(json.dumps({
            "name": bundle.name,
            "implementation": "mlserver_model.OnnxClassifier",
            "parameters": {
                "uri": str(bundle.onnx),
                "extra": {
                    "input": bundle.input_name, "output": bundle.output_name,
                    "mean": bundle.mean, "std": bundle.std, "threads": THREADS,
                },
            },
        }, indent=2))
        menv = dict(os.environ, PYTHONPATH=str(HERE))
        argv = [str(BENCH_DIR / "mlserver" / "bin" / "mlserver"), "start", str(root)]
        proc = start(f"mlserver-{size}", argv, rundir, env=menv, cwd=str(root))
        url = f"127.0.0.1:{grpc_port}"
        pending.append((proc, url))
        targets.append(GrpcTarget("MLServer", url, bundle))

    for (proc, url), target in zip(pending, targets):
        target.pid = proc.pid
        said = wait_ready(proc, url, bundle.name, args.ready_timeout)
        versions.setdefault("server_metadata", {})[target.name] = said
        log(f"bench-peers: {target.name} ready on {url} ({said})")
    return targets


def check_answers(bundle, targets, bare):
    """Every server's probabilities on the same tensors, against bare ORT's and the bundle's."""
    x = bundle.pixels[: min(len(bundle.pixels), bundle.max_batch, 8)]
    want = bare.answer(x)
    diffs = {"bare ORT vs reference.json": float(np.abs(want - bundle.ref_probs[: len(x)]).max())}
    for t in targets:
        got = t.answer(x)
        diffs[f"{t.name} vs bare ORT"] = float(np.abs(got - want).max())
    worst = max(diffs.values())
    log("bench-peers: same answers? max |probability difference|: "
        + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    if worst > 1e-3:
        raise RuntimeError(f"the servers disagree on the same tensors (max difference {worst:.3g})")
    return diffs


# ---------------------------------------------------------------- report


def fmt_ips(s):
    return f"{s['images_per_s']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def fmt_cell(s):
    cut = " (cut at --max-seconds)" if s.get("truncated") else ""
    return f"{fmt_ips(s)}; {s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms{cut}"


def ratio(a, b):
    return f"{a['images_per_s'] / b['images_per_s']:.2f}" if a and b and b["images_per_s"] else "-"


def table(size, bundle, results, names, repeats):
    ms_names = [n for n in names if n.startswith("medsentry")]
    peers = [n for n in names if n in ("KServe", "MLServer")]
    cols = ["level"] + [f"{n} img/s (min-max); p50 / p99" for n in names]
    for m in ms_names:
        cols += [f"{m} / {o}" for o in ["bare ORT"] + peers]
    lines = [
        f"### {size} px: {bundle.name} ({'x'.join(map(str, bundle.shape))}), median of {repeats} run(s)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for callers, batch in LEVELS:
        lv = level_name(callers, batch)
        row = results.get(lv)
        if not row:
            continue
        cells = [lv] + [fmt_cell(row[n]) if n in row else "-" for n in names]
        for m in ms_names:
            cells += [ratio(row.get(m), row.get(o)) for o in ["bare ORT"] + peers]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"CPU ms per image, median over runs: the server's process tree (the tritonclient "
              f"callers' own beside it); bare ORT runs in the driver", "",
              "| level | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for callers, batch in LEVELS:
        row = results.get(level_name(callers, batch))
        if row:
            lines.append("| " + " | ".join([level_name(callers, batch)] + [fmt_cpu(row.get(n)) for n in names]) + " |")
    return "\n".join(lines)


def fmt_cpu(s):
    if not s:
        return "-"
    client = s.get("client_cpu_ms_per_image")
    return f"{s['server_cpu_ms_per_image']:.2f}" + ("" if client is None else f" ({client:.2f})")


# ---------------------------------------------------------------- main


def main():
    global PIDFILE
    ap = argparse.ArgumentParser(prog="scripts/bench-peers.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="few images per level and one repeat: checks the script, not a measurement")
    ap.add_argument("--repeats", type=int, default=None, help="runs per level and server (3; --quick: 1)")
    ap.add_argument("--requests", type=int, default=None,
                    help="images per level and run (64 px: 2000, 224 px: 200; --quick: 320 / 48); "
                    "batch 8 sends an eighth as many calls")
    ap.add_argument("--sizes", default="64,224", help="model sizes, comma-separated: 64, 224")
    ap.add_argument("--cascade", action="store_true",
                    help="also run medsentry with a policy that sets cascade = true (bundles that have one)")
    ap.add_argument("--peers", default="kserve,mlserver", help="peers to run: kserve, mlserver (comma-separated)")
    ap.add_argument("--mlserver-workers", type=int, default=1,
                    help="MLServer parallel_workers (1, its default: inference in one worker process; "
                    "0: in the server process)")
    ap.add_argument("--max-seconds", type=float, default=90,
                    help="longest one level may run before it stops taking calls (reported as truncated)")
    ap.add_argument("--ready-timeout", type=float, default=240, help="seconds each server gets to become ready")
    ap.add_argument("--medsentry", default=str(REPO / "target" / "release" / "medsentry"))
    ap.add_argument("--build", action="store_true",
                    help="run `cargo build --release` first (scripts/bench-peers.sh does it; "
                    "without it the binary is built only when missing)")
    ap.add_argument("--out", default=None, help="results JSON (default target/bench-peers/results-DATE.json)")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    for s in args.sizes:
        if s not in BUNDLES:
            ap.error(f"--sizes: {s} is not one of {sorted(BUNDLES)}")
    repeats = args.repeats or (1 if args.quick else 3)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix=f"run-{stamp}-", dir=BENCH_DIR))
    PIDFILE = os.environ.get("BENCH_PEERS_PIDFILE")
    out_path = Path(args.out) if args.out else BENCH_DIR / f"results-{stamp}.json"

    med_version = subprocess.run([args.medsentry, "--version"], capture_output=True, text=True).stdout.strip()
    versions = {
        "medsentry": med_version,
        "driver": pkg_versions(sys.executable, ["tritonclient", "numpy", "onnxruntime"]),
    }
    if "kserve" in args.peers:
        versions["kserve"] = pkg_versions(str(BENCH_DIR / "kserve" / "bin" / "python"),
                                          ["kserve", "onnxruntime", "numpy", "grpcio"])
    if "mlserver" in args.peers:
        versions["mlserver"] = pkg_versions(str(BENCH_DIR / "mlserver" / "bin" / "python"),
                                            ["mlserver", "onnxruntime", "numpy", "grpcio"])
    log("bench-peers: versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))

    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeats": repeats,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "intra_op_threads": THREADS,
        "mlserver_parallel_workers": args.mlserver_workers if "mlserver" in args.peers else None,
        "levels": [level_name(c, b) for c, b in LEVELS],
        "versions": versions,
        "sizes": {},
    }
    tables = []
    failed = []
    t_all = time.monotonic()
    for size in args.sizes:
        try:
            bundle = Bundle(BUNDLES[size])
            images = args.requests or (QUICK_IMAGES if args.quick else DEFAULT_IMAGES)[size]
            log(f"bench-peers: {size} px, {bundle.name}: starting the servers")
            bare = OrtTarget(bundle)
            servers = start_servers(bundle, size, args, rundir, versions)
            diffs = check_answers(bundle, servers, bare)
            targets = [bare] + servers
            names = [t.name for t in targets]
            runs = {level_name(c, b): {n: [] for n in names} for c, b in LEVELS}
            for r in range(repeats):
                for callers, batch in LEVELS:
                    if batch > bundle.max_batch:
                        continue
                    lv = level_name(callers, batch)
                    k = r % len(targets)
                    for t in targets[k:] + targets[:k]:
                        res = measure(t, callers, batch, images, args.max_seconds)
                        runs[lv][t.name].append(res)
                        log(f"bench-peers: {size} px, run {r + 1}/{repeats}, {lv}: {t.name} "
                            f"{res['images_per_s']:,.0f} img/s, p50 {res['p50_ms']:.2f} ms, "
                            f"p99 {res['p99_ms']:.2f} ms{' (TRUNCATED)' if res['truncated'] else ''}")
            results = {lv: {n: summarise(rs) for n, rs in row.items() if rs} for lv, row in runs.items()}
            results = {lv: row for lv, row in results.items() if row}
            report["sizes"][str(size)] = {
                "bundle": bundle.name,
                "shape": bundle.shape,
                "images_per_level": images,
                "answers_max_abs_diff": diffs,
                "results": results,
            }
            tables.append(table(size, bundle, results, names, repeats))
        except Exception as e:  # report it, keep the other sizes' figures
            log(f"bench-peers: {size} px FAILED: {type(e).__name__}: {e}")
            report["sizes"][str(size)] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(size)
        finally:
            stop_all()
    report["seconds"] = round(time.monotonic() - t_all, 1)
    out_path.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"medsentry vs KServe ModelServer vs MLServer vs bare ONNX Runtime "
          f"({report['date']}, {os.cpu_count()} CPUs, {THREADS} intra-op threads everywhere"
          f"{', QUICK: noisy, not a measurement' if args.quick else ''})")
    for k, v in versions.items():
        if k != "server_metadata":
            print(f"- {k}: {v}")
    print(f"- servers say: " + ", ".join(f"{k}: {v}" for k, v in versions.get("server_metadata", {}).items()))
    print("- cells: images/s of the median run (min-max over runs); p50 / p99 latency of that run, per call")
    for t in tables:
        print()
        print(t)
    print()
    for size in failed:
        print(f"\n### {size} px: FAILED: {report['sizes'][str(size)]['error']} (server logs: {rundir.relative_to(REPO)})")
    print()
    print(f"results: {out_path.relative_to(REPO) if out_path.is_relative_to(REPO) else out_path}; "
          f"took {report['seconds']:.0f} s")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

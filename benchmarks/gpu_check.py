#!/usr/bin/env python
"""One-shot hardware check of fastbp's CUDA backend: everything a short GPU session
needs, in one command, with every result written to one directory.

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUTDIR          # on a GPU machine
    fastbp bench --device cuda --out OUTDIR                      # the same
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=. python3 benchmarks/gpu_check.py OUTDIR --dry-run

Sections (each time-boxed; results go to OUTDIR/gpu_check.json after every step, so a
run cut short still leaves what it measured, and a table is printed at the end):

1. ``tests``     — the CUDA test suite (``tests/cuda``) on the real device, in its own
   pytest process (no simulator): pass / fail / skip counts and the failures;
2. ``parity``    — fits on the GPU against the same fits on the CPU (float64: relative
   difference ≤ 1e-9; float32: ≤ 1e-4), with the automatic kernel choice (the fused
   step of ``kernels/cuda_fused.py`` where it applies), with the per-layer kernels and
   with their register-blocked ("wide") GEMMs forced, and the training modes the GPU
   supports (a mode the GPU refuses is recorded as such);
3. ``sanitizer`` — ``compute-sanitizer --tool memcheck`` and ``--tool racecheck`` over a
   small fit in a subprocess; error counts parsed from their summaries;
4. ``speed``     — training samples/s of fastbp-cuda (automatic choice, and at widths
   where the fused step applies also the per-layer kernels forced), PyTorch eager (and
   ``torch.compile`` in a subprocess that compiles while sections 1–3 run and times
   after section 4, time-boxed) and fastbp-cpu for MLPs
   [w, w, w, w, 10] (3 hidden layers), w ∈ {64, 128, 256, 1024}, batch 2^10 … 2^16,
   float32, ReLU, softmax + cross-entropy, Adam; each contender trains a fixed number
   of steps after a warm-up fit at the same batch size.

Sections 1 and 3 run as subprocesses while section 2 runs here; section 4 starts only
when they are done, so the timings have the GPU to themselves. ``--dry-run`` shrinks
everything (tiny shapes, a few tests, no sanitizer) so the script runs end to end under
``NUMBA_ENABLE_CUDASIM=1``: ``tests/cuda/test_gpu_check.py`` does that in CI so the
script cannot rot. The device machine needs numba, numba-cuda and numpy (torch,
pytest and compute-sanitizer are optional: a section without its tool says so).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastbp  # noqa: E402
from fastbp.kernels import cuda_config  # noqa: E402

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
SECTIONS = ("tests", "parity", "sanitizer", "speed")
#: parity tolerances on max|θ_gpu − θ_cpu| / max|θ_cpu| (and the same on the loss history)
PARITY_TOL = {"float64": 1e-9, "float32": 1e-4}
#: the simulator's launch geometry for --dry-run (several blocks on tiny shapes)
#: classes of the speed section's softmax output
CLASSES = 10
TINY_CONFIG = cuda_config.CudaConfig(tile=4, micro=2, depth=3, block=8, reduce_blocks=3, sms=2, split_rows=4,
                                     max_splits=3, bn_columns=2, fused_rows=4, fused_micro=2, fused_threads=8,
                                     fused_blocks=2)
#: the kernel paths of the parity section: automatic (the fused step where it applies),
#: the per-layer kernels with the automatic GEMM choice, and with the wide GEMMs forced
PATHS = {"auto": {}, "layers": dict(fused="never"), "wide": dict(fused="never", gemm="wide")}


# --- the results file ---------------------------------------------------------------------------


class Report:
    """The results dictionary, rewritten atomically to OUTDIR/gpu_check.json on every change."""

    def __init__(self, outdir):
        self.path = Path(outdir) / "gpu_check.json"
        self.data = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}

    def set(self, section, key, value):
        self.data["sections"].setdefault(section, {})[key] = value
        self.save()

    def append(self, section, key, value):
        self.data["sections"].setdefault(section, {}).setdefault(key, []).append(value)
        self.save()

    def save(self):
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        os.replace(tmp, self.path)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def say(msg):
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- subprocesses with a deadline -------------------------------------------------------------------


class Child:
    """A subprocess in its own session (so a timeout kills its children too), output to a file."""

    def __init__(self, cmd, log_path, timeout, env=None):
        self.cmd, self.log_path, self.timeout = cmd, Path(log_path), timeout
        self.log = open(self.log_path, "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.timed_out = False

    def wait(self):
        """(return code or None on timeout, seconds, output)."""
        try:
            rc = self.proc.wait(timeout=max(1.0, self.timeout - (time.perf_counter() - self.t0)))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self.log.close()
        return rc, time.perf_counter() - self.t0, self.log_path.read_text(errors="replace")


def child_env(dry_run):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep))
    if not dry_run:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


# --- 1. the CUDA test suite on the device ---------------------------------------------------------


def start_tests(outdir, dry_run, timeout):
    try:
        import pytest  # noqa: F401
    except ImportError:
        return "pytest is not installed"
    xml = Path(outdir) / "cuda_tests.xml"
    # -v: one line per test, so a run cut short by the timeout still says what passed;
    # the PTX gate needs no GPU (CI runs it) and would spend minutes compiling here
    # whole fits against CPU fits ("slow": each CPU mode compiles for tens of seconds on a
    # cold cache) are the parity section's job here
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE", f"--junitxml={xml}",
           "-m", "not slow", "--ignore", str(ROOT / "tests" / "cuda" / "test_cuda_ptx.py"),
           str(ROOT / "tests" / "cuda")]
    if dry_run:  # a few quick tests: the plumbing, not the suite
        cmd += ["-k", "gather_batch or count_nonfinite"]
    return Child(cmd, Path(outdir) / "cuda_tests.log", timeout, child_env(dry_run))


def finish_tests(report, child, outdir):
    if isinstance(child, str):
        report.set("tests", "skipped", child)
        return
    rc, seconds, output = child.wait()
    result = {"returncode": rc, "timed_out": child.timed_out, "seconds": round(seconds, 1),
              "log": child.log_path.name}
    xml = Path(outdir) / "cuda_tests.xml"
    if xml.exists():
        suite = ElementTree.parse(xml).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        result.update(counts)
        failures = []
        for case in suite.iter("testcase"):
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                                 "message": (bad.get("message") or "")[:300],
                                 "detail": (bad.text or "")[-1500:]})
        result["failures_detail"] = failures[:30]
    else:  # killed: count the per-test lines of -v
        outcomes = re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", output, re.M)
        result.update({"passed": sum(o == "PASSED" for _, o in outcomes),
                       "failures": sum(o == "FAILED" for _, o in outcomes),
                       "errors": sum(o == "ERROR" for _, o in outcomes),
                       "skipped": sum(o == "SKIPPED" for _, o in outcomes),
                       "failures_detail": [{"test": t, "message": o, "detail": ""} for t, o in outcomes
                                           if o in ("FAILED", "ERROR")][:30]})
    match = re.search(r"(\d+) warnings?", output.splitlines()[-1] if output.strip() else "")
    result["warnings"] = int(match.group(1)) if match else 0
    result["summary"] = output.strip().splitlines()[-1] if output.strip() else ""
    report.set("tests", "result", result)


# --- 2. GPU fit == CPU fit --------------------------------------------------------------------------


def rel_diff(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    return float(np.max(np.abs(actual - expected))) / scale


def parity_cases(dry_run):
    """(name, network kwargs, fit kwargs, n, sizes): small problems with partial batches
    and widths that are not tile multiples; the modes are tried and a refusal recorded."""
    if dry_run:
        sizes, n, batch, epochs = [5, 6, 3], 7, 5, 1
    else:
        sizes, n, batch, epochs = [20, 70, 33, 5], 300, 64, 2
    base = dict(loss="cross_entropy", optimizer=fastbp.Adam(0.01), epochs=epochs, batch_size=batch)
    return [
        ("adam-clip-l2", dict(activation="tanh"), dict(base, clip_norm=0.5, l2=1e-3), n, sizes),
        *([] if dry_run else
          [("momentum-relu", dict(activation="relu"), dict(base, optimizer=fastbp.Momentum(0.05)), n, sizes),
           # batches of 512 rows: split-K weight gradients (2 slices of 256), a partial last batch
           ("split-k", dict(activation="relu"), dict(base, batch_size=512, clip_norm=1.0), 1100, sizes)]),
        ("dropout", dict(activation="relu", dropout=0.2), base, n, sizes),
        ("batchnorm", dict(activation="relu", batchnorm=True), base, n, sizes),
        ("checkpoint", dict(activation="tanh"), dict(base, checkpoint=1), n, sizes),
    ]


def run_parity(report, dry_run, deadline):
    from fastbp.kernels import cuda_config as cc
    base_config = cc.config
    rng = np.random.default_rng(0)
    all_ok = True
    for dtype in ("float64", "float32"):
        for name, net_kwargs, fit_kwargs, n, sizes in parity_cases(dry_run):
            for path, changes in PATHS.items():
                if path != "auto" and (name not in ("adam-clip-l2", "split-k") or dry_run and dtype == "float32"):
                    continue
                if dry_run and dtype == "float32" and name == "batchnorm":   # simulator time
                    continue
                key = f"{dtype}/{name}/{path}"
                if time.perf_counter() > deadline:
                    report.append("parity", "cases", {"case": key, "status": "skipped: time budget"})
                    continue
                X = rng.standard_normal((n, sizes[0])).astype(dtype)
                y = rng.integers(0, sizes[-1], n)
                nets = [fastbp.MLP(sizes, output="softmax", dtype=dtype, seed=3, **net_kwargs) for _ in range(2)]
                cc.config = _replace(base_config, **changes)
                t0 = time.perf_counter()
                try:
                    h_gpu = nets[0].fit(X, y, device="cuda", **fit_kwargs)
                except (ValueError, NotImplementedError) as exc:
                    report.append("parity", "cases", {"case": key, "status": f"refused on cuda: {exc}"[:300]})
                    continue
                except Exception as exc:  # a crash on the device is a finding, not the end of the check
                    all_ok = False
                    status = f"ERROR {type(exc).__name__}: {exc}"[:600]
                    report.append("parity", "cases", {"case": key, "status": status})
                    continue
                finally:
                    cc.config = base_config
                h_cpu = nets[1].fit(X, y, **fit_kwargs)
                d_theta = rel_diff(nets[0].theta, nets[1].theta)
                d_loss = rel_diff(h_gpu.loss, h_cpu.loss)
                d_forward = rel_diff(nets[1].forward(X, device="cuda"), nets[1].forward(X))
                d_diagnostics = rel_diff(np.array(h_gpu.grad_norm), np.array(h_cpu.grad_norm))
                # batchnorm: the running statistics too (nothing to compare without)
                d_running = rel_diff(nets[0].bn_running, nets[1].bn_running) if nets[1].batchnorm else 0.0
                worst = max(d_theta, d_loss, d_forward, d_diagnostics, d_running)
                ok = bool(worst <= PARITY_TOL[dtype])
                all_ok &= ok
                report.append("parity", "cases", {
                    "case": key, "status": "ok" if ok else "MISMATCH", "rel_diff_theta": d_theta,
                    "rel_diff_loss": d_loss, "rel_diff_forward": d_forward, "rel_diff_grad_norm": d_diagnostics,
                    "rel_diff_bn_running": d_running,
                    "tolerance": PARITY_TOL[dtype],
                    "seconds": round(time.perf_counter() - t0, 2)})
                say(f"parity {key}: θ {d_theta:.2e}, loss {d_loss:.2e}, forward {d_forward:.2e} "
                    f"({'ok' if ok else 'MISMATCH'})")
    report.set("parity", "all_ok", all_ok)


def _replace(config, **changes):
    from dataclasses import replace
    return replace(config, **changes)


# --- 3. compute-sanitizer -------------------------------------------------------------------------


def sanitizer_fit(dtype):
    """The small fits each sanitizer tool runs (``--sanitizer-fit``): every kernel, a
    partial batch, dropout, clipping (the reductions), the update and its diagnostics;
    then the fused step (no dropout); then batchnorm (its column reductions in shared
    memory) with dropout."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 19)).astype(dtype)
    y = rng.integers(0, 4, 100)
    net = fastbp.MLP([19, 37, 21, 4], activation="relu", dtype=dtype, seed=0, dropout=0.2)
    net.fit(X, y, optimizer="adam", epochs=1, batch_size=32, clip_norm=1.0, l2=1e-4, device="cuda")
    fused = fastbp.MLP([19, 37, 21, 4], activation="tanh", dtype=dtype, seed=0)   # the fused step (no dropout)
    fused.fit(X, y, optimizer="adam", epochs=1, batch_size=32, clip_norm=1.0, l2=1e-4, device="cuda")
    net.forward(X, device="cuda")
    net.evaluate(X, y, device="cuda")
    bn_net = fastbp.MLP([19, 37, 21, 4], activation="relu", dtype=dtype, seed=0, dropout=0.2, batchnorm=True)
    bn_net.fit(X, y, optimizer="adam", epochs=1, batch_size=32, clip_norm=1.0, device="cuda")
    bn_net.evaluate(X, y, device="cuda")
    print("sanitizer fit done")


def start_sanitizer(outdir, dry_run, timeout):
    tool = shutil.which("compute-sanitizer")
    if dry_run or SIMULATOR:
        return "skipped: the CUDA simulator has no device code to check"
    if tool is None:
        for candidate in ("/usr/local/cuda/bin/compute-sanitizer", "/opt/nvidia/compute-sanitizer/compute-sanitizer"):
            if os.path.exists(candidate):
                tool = candidate
    if tool is None:
        return "skipped: compute-sanitizer not found on PATH"
    children = {}
    for name in ("memcheck", "racecheck"):
        cmd = [tool, "--tool", name, "--print-limit", "20", sys.executable, str(Path(__file__).resolve()),
               str(outdir), "--sanitizer-fit", "float32"]
        children[name] = Child(cmd, Path(outdir) / f"sanitizer_{name}.log", timeout, child_env(False))
    return children


def finish_sanitizer(report, children):
    if isinstance(children, str):
        report.set("sanitizer", "skipped", children)
        return
    for name, child in children.items():
        rc, seconds, output = child.wait()
        summary = re.findall(r"ERROR SUMMARY: (\d+) error", output)
        hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazard", output)
        report.set("sanitizer", name, {
            "returncode": rc, "timed_out": child.timed_out, "seconds": round(seconds, 1),
            "errors": int(summary[-1]) if summary else None, "hazards": int(hazards[-1]) if hazards else None,
            "fit_completed": "sanitizer fit done" in output, "log": child.log_path.name,
            "tail": output[-1500:]})
        say(f"sanitizer {name}: errors {summary[-1] if summary else '?'}"
            f"{', timed out' if child.timed_out else ''}")


# --- 4. throughput --------------------------------------------------------------------------------------


def speed_grid(args):
    widths = [int(w) for w in args.widths.split(",")]
    batches = [1 << int(b) for b in args.batches.split(",")]
    return widths, batches


def speed_sizes(width):
    return [width] * 4 + [CLASSES]


def fastbp_rate(X, y, width, batch, steps, device, dtype, fused=None):
    """samples/s of one fit epoch of ``steps`` batches, after a 2-batch warm-up fit;
    ``fused``: ``CudaConfig.fused`` for the fits ("never": the per-layer kernels; None:
    the current config's)."""
    net = fastbp.MLP(speed_sizes(width), activation="relu", output="softmax", dtype=dtype, seed=0)
    kwargs = dict(loss="cross_entropy", optimizer=fastbp.Adam(1e-3), batch_size=batch, device=device)
    base_config = cuda_config.config
    cuda_config.config = _replace(base_config, fused=fused or base_config.fused)
    try:
        net.fit(X[:2 * batch], y[:2 * batch], epochs=1, **kwargs)
        n = steps * batch
        history = net.fit(X[:n], y[:n], epochs=1, warm_start=True, **kwargs)
    finally:
        cuda_config.config = base_config
    return float(history.samples_per_second[-1])


def fused_applies(width):
    """Whether the automatic choice runs the fused step for the speed network."""
    from fastbp.kernels import cuda_fused
    return cuda_config.config.fused != "never" and cuda_fused.why_not(speed_sizes(width), "float32",
                                                                       cuda_config.config) is None


def torch_model(width, in_width, classes, device, compile_it=False):
    import torch
    layers, fan_in = [], in_width
    for _ in range(3):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, classes))
    model = torch.nn.Sequential(*layers).to(device=device, dtype=torch.float32)
    return torch.compile(model) if compile_it else model


def torch_trainer(Xd, yd, width, batch, steps, compile_it=False):
    """A PyTorch training step on the GPU (Adam, cross-entropy; batches gathered through a
    random permutation as fastbp does), warmed up by 3 steps (compiling with ``compile_it``);
    returns ``time_steps()``, which runs and times ``steps`` steps: samples/s."""
    import torch
    model = torch_model(width, Xd.shape[1], CLASSES, Xd.device, compile_it)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = steps * batch
    perm = torch.randperm(n, device=Xd.device)

    def step(s):
        idx = perm[s * batch:(s + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(Xd[idx]), yd[idx]).backward()
        optimizer.step()

    for s in range(3):
        step(s % steps)
    torch.cuda.synchronize()

    def time_steps():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(steps):
            step(s)
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    return time_steps


def torch_rate(Xd, yd, width, batch, steps):
    """samples/s of PyTorch eager (see :func:`torch_trainer`)."""
    return torch_trainer(Xd, yd, width, batch, steps)()


def torch_status():
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if SIMULATOR or not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    return torch, None


def steps_for(batch, args):
    return max(args.min_steps, min(args.max_steps, args.step_rows // batch))


def run_speed(report, args, deadline):
    widths, batches = speed_grid(args)
    torch, why = torch_status()
    if why:
        report.set("speed", "torch", f"skipped: {why}")
    report.set("speed", "setup", {
        "network": f"[w, w, w, w, {CLASSES}] relu, softmax + cross-entropy, Adam lr=1e-3, float32",
        "steps": {b: steps_for(b, args) for b in batches}, "cpu_max_batch": args.cpu_max_batch,
        "cpu_rows": args.cpu_rows})
    rng = np.random.default_rng(0)
    for width in widths:
        max_rows = max(steps_for(b, args) * b for b in batches)
        X = rng.standard_normal((max_rows, width), dtype=np.float32)
        y = rng.integers(0, CLASSES, max_rows)
        Xd = yd = None
        if torch is not None:
            Xd = torch.as_tensor(X, device="cuda")
            yd = torch.as_tensor(y, device="cuda")
        for batch in batches:
            row = {"width": width, "batch": batch, "steps": steps_for(batch, args)}
            if time.perf_counter() > deadline:
                row["status"] = "skipped: time budget"
                report.append("speed", "rows", row)
                continue
            steps = row["steps"]
            cpu_steps = max(1, min(steps, args.cpu_rows // batch))
            contenders = [("fastbp_cuda", fastbp_rate, (X, y, width, batch, steps, "cuda", "float32"))]
            row["fastbp_cuda_path"] = "fused" if fused_applies(width) else "layers"
            if row["fastbp_cuda_path"] == "fused":   # both paths where the fused one applies
                contenders.append(("fastbp_cuda_layers", fastbp_rate,
                                   (X, y, width, batch, steps, "cuda", "float32", "never")))
            if torch is not None:
                contenders.append(("torch_eager", torch_rate, (Xd, yd, width, batch, steps)))
            if batch <= args.cpu_max_batch and not args.no_cpu:
                contenders.append(("fastbp_cpu", fastbp_rate, (X, y, width, batch, cpu_steps, "cpu", "float32")))
            for contender, rate, rate_args in contenders:
                try:
                    row[contender] = rate(*rate_args)
                except Exception as exc:  # recorded: one failing contender must not end the check
                    row[contender] = None
                    row[f"{contender}_error"] = f"{type(exc).__name__}: {exc}"[:400]
            report.append("speed", "rows", row)
            say("speed " + ", ".join(f"{k} {v:,.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        Xd = yd = None
        if torch is not None:
            torch.cuda.empty_cache()


def start_torch_compile(args, outdir):
    """Start the torch.compile worker: it compiles its models while the tests, parity and
    sanitizer run, then waits for OUTDIR/torch_compile.go (written after the speed
    section, so its timings have the GPU to themselves) and times them."""
    torch, why = torch_status()
    if why:
        return f"skipped: {why}"
    (Path(outdir) / "torch_compile.go").unlink(missing_ok=True)
    return Child([sys.executable, str(Path(__file__).resolve()), str(outdir), "--torch-compile-worker",
                  "--widths", args.widths, "--compile-batches", args.compile_batches,
                  "--step-rows", str(args.step_rows), "--min-steps", str(args.min_steps),
                  "--max-steps", str(args.max_steps)],
                 Path(outdir) / "torch_compile.log", args.budget, child_env(False))


def finish_torch_compile(report, child, outdir, deadline):
    if isinstance(child, str):
        report.set("speed", "torch_compile", child)
        return
    (Path(outdir) / "torch_compile.go").write_text("go\n")
    # until the deadline, and at least 30 s more to time the compiled models
    child.timeout = max(deadline, time.perf_counter() + 30) - child.t0
    rc, took, output = child.wait()
    out = Path(outdir) / "torch_compile.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    report.set("speed", "torch_compile", {"returncode": rc, "timed_out": child.timed_out, "seconds": round(took, 1),
                                          "rows": rows, "tail": output[-800:] if rc else ""})


def torch_compile_worker(args, outdir):
    import torch
    widths, _ = speed_grid(args)
    batches = [1 << int(b) for b in args.compile_batches.split(",")]
    rng = np.random.default_rng(0)
    trainers = []
    for width in widths:
        for batch in batches:
            steps = steps_for(batch, args)
            X = torch.as_tensor(rng.standard_normal((steps * batch, width), dtype=np.float32), device="cuda")
            y = torch.as_tensor(rng.integers(0, CLASSES, steps * batch), device="cuda")
            t0 = time.perf_counter()
            trainers.append((width, batch, torch_trainer(X, y, width, batch, steps, compile_it=True),
                             time.perf_counter() - t0))
            print(f"compiled width {width} batch {batch} in {trainers[-1][3]:.1f} s", flush=True)
    go = Path(outdir) / "torch_compile.go"
    while not go.exists():
        time.sleep(0.2)
    with open(Path(outdir) / "torch_compile.jsonl", "w") as f:
        for width, batch, time_steps, compile_seconds in trainers:
            f.write(json.dumps({"width": width, "batch": batch, "torch_compile": time_steps(),
                                "compile_seconds": compile_seconds}) + "\n")
            f.flush()


# --- the table ----------------------------------------------------------------------------------------


def format_table(data):
    lines = []
    sections = data.get("sections", {})
    meta = sections.get("meta", {})
    lines.append(f"# fastbp GPU check, {data.get('started')} — {meta.get('device', '?')}")
    tests = sections.get("tests", {})
    if "result" in tests:
        r = tests["result"]
        lines.append(f"\n## tests/cuda on the device: {r.get('passed', '?')} passed, {r.get('failures', '?')} failed, "
                     f"{r.get('errors', '?')} errors, {r.get('skipped', '?')} skipped, {r.get('warnings')} warnings "
                     f"({r['seconds']} s{', TIMED OUT' if r['timed_out'] else ''})")
        for f in r.get("failures_detail", []):
            lines.append(f"- FAIL {f['test']}: {f['message'][:200]}")
    elif tests:
        lines.append(f"\n## tests/cuda: {tests.get('skipped')}")
    parity = sections.get("parity", {})
    if parity:
        lines.append("\n## parity: GPU fit vs CPU fit (max |Δ| / max |cpu|)\n")
        lines.append("| case | θ | loss | forward | status |\n|---|---:|---:|---:|---|")
        for c in parity.get("cases", []):
            if "rel_diff_theta" in c:
                lines.append(f"| {c['case']} | {c['rel_diff_theta']:.1e} | {c['rel_diff_loss']:.1e} | "
                             f"{c['rel_diff_forward']:.1e} | {c['status']} |")
            else:
                lines.append(f"| {c['case']} | | | | {c['status'][:120]} |")
    sanitizer = sections.get("sanitizer", {})
    if sanitizer:
        lines.append("\n## compute-sanitizer")
        if "skipped" in sanitizer:
            lines.append(sanitizer["skipped"])
        for tool in ("memcheck", "racecheck"):
            if tool in sanitizer:
                s = sanitizer[tool]
                lines.append(f"- {tool}: {s['errors']} errors, hazards {s['hazards']}, fit completed "
                             f"{s['fit_completed']}, {s['seconds']} s{', TIMED OUT' if s['timed_out'] else ''}")
    speed = sections.get("speed", {})
    if speed.get("rows"):
        compiled = {}
        tc = speed.get("torch_compile")
        if isinstance(tc, dict):
            compiled = {(r["width"], r["batch"]): r["torch_compile"] for r in tc.get("rows", [])}
        lines.append(f"\n## training samples/s, float32, [w, w, w, w, {CLASSES}], Adam, softmax-CE\n")
        lines.append("| width | batch | fastbp cuda | path | cuda per-layer | torch eager | torch.compile | "
                     "fastbp cpu | cuda/torch | cuda/cpu | fused/per-layer |")
        lines.append("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")

        def num(v):
            return f"{v:,.0f}" if isinstance(v, (int, float)) and v else "–"

        def ratio(a, b):
            return f"{a / b:.2f}×" if isinstance(a, float) and isinstance(b, float) and a and b else "–"

        for r in speed["rows"]:
            cuda_rate, eager, cpu = r.get("fastbp_cuda"), r.get("torch_eager"), r.get("fastbp_cpu")
            layers = r.get("fastbp_cuda_layers")
            tcomp = compiled.get((r["width"], r["batch"]))
            lines.append(f"| {r['width']} | {r['batch']} | {num(cuda_rate)} | {r.get('fastbp_cuda_path', '')} | "
                         f"{num(layers)} | {num(eager)} | {num(tcomp)} | {num(cpu)} | {ratio(cuda_rate, eager)} | "
                         f"{ratio(cuda_rate, cpu)} | {ratio(cuda_rate, layers)} |"
                         + (f" {r['status']}" if "status" in r else ""))
            for k, v in r.items():
                if k.endswith("_error"):
                    lines.append(f"|  |  | {k}: {v[:150]} |")
        if isinstance(tc, str):
            lines.append(f"\ntorch.compile: {tc}")
    lines.append(f"\ntotal: {data.get('seconds', '?')} s")
    return "\n".join(lines)


# --- driver ---------------------------------------------------------------------------------------------


def device_info():
    info = {"python": platform.python_version(), "numpy": np.__version__, "simulator": SIMULATOR}
    try:
        import numba
        info["numba"] = numba.__version__
        from numba import cuda
        if not SIMULATOR and cuda.is_available():
            dev = cuda.get_current_device()
            info["device"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
            info["compute_capability"] = dev.compute_capability
            info["sms"] = dev.MULTIPROCESSOR_COUNT
        elif SIMULATOR:
            info["device"] = "Numba CUDA simulator"
    except Exception as exc:
        info["device_error"] = repr(exc)
    for module in ("numba_cuda", "torch"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    if shutil.which("nvidia-smi"):
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi",
                                                 "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                                 "--format=csv,noheader"], capture_output=True, text=True,
                                                timeout=20).stdout.strip()
        except Exception:
            pass
    return info


def build_parser():
    parser = argparse.ArgumentParser(description="one-shot hardware check of fastbp's CUDA backend")
    parser.add_argument("outdir", help="directory for gpu_check.json, the logs and the table")
    parser.add_argument("--dry-run", action="store_true", help="tiny everything (runs under NUMBA_ENABLE_CUDASIM=1)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--budget", type=float, default=290, help="seconds for the whole check (default 290)")
    parser.add_argument("--widths", default="64,128,256,1024")
    parser.add_argument("--batches", default="10,11,12,13,14,15,16", help="log2 of the batch sizes")
    parser.add_argument("--step-rows", type=int, default=1 << 18, help="timed rows per config (steps = rows/batch)")
    parser.add_argument("--min-steps", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--cpu-max-batch", type=int, default=1 << 13, help="fastbp-cpu only up to this batch")
    parser.add_argument("--cpu-rows", type=int, default=1 << 14, help="timed rows of fastbp-cpu per config")
    parser.add_argument("--no-cpu", action="store_true", help="skip fastbp-cpu in the speed table")
    parser.add_argument("--compile-batches", default="14", help="log2 batches timed with torch.compile")
    parser.add_argument("--tests-timeout", type=float, default=None,
                        help="seconds for the device test run (default: the budget less --speed-reserve)")
    parser.add_argument("--sanitizer-timeout", type=float, default=None,
                        help="seconds per sanitizer tool (same default)")
    parser.add_argument("--speed-reserve", type=float, default=100,
                        help="seconds kept for the speed section, which starts when the tests end (default 100)")
    parser.add_argument("--sanitizer-fit", metavar="DTYPE", help=argparse.SUPPRESS)
    parser.add_argument("--torch-compile-worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if args.sanitizer_fit:
        sanitizer_fit(args.sanitizer_fit)
        return 0
    if args.torch_compile_worker:
        torch_compile_worker(args, outdir)
        return 0
    if args.dry_run:
        global CLASSES
        CLASSES = 3
        args.widths, args.batches, args.step_rows, args.min_steps = "4", "1,2", 2, 1
        args.cpu_max_batch, args.cpu_rows, args.tests_timeout = 4, 4, 300
    if SIMULATOR:
        cuda_config.config = TINY_CONFIG
    t_start = time.perf_counter()
    deadline = t_start + args.budget
    report = Report(outdir)
    report.set("meta", "args", vars(args))
    report.set("meta", "device", "")
    info = device_info()
    report.data["sections"]["meta"].update(info)
    report.save()
    say(f"device: {info.get('device')} ({info.get('nvidia_smi', '')}); results in {report.path}")
    if not fastbp.cuda_available():
        report.set("meta", "error", "fastbp.cuda_available() is False")
        say("no CUDA device and no simulator: nothing to check")
        return 2
    sections = set(args.sections.split(","))
    # the tests and sanitizers run beside the parity section; the speed section waits
    # for them (clean timings), so they are cut off where the speed section must start
    cutoff = max(30.0, args.budget - args.speed_reserve) if "speed" in sections else args.budget
    args.tests_timeout = args.tests_timeout or cutoff
    args.sanitizer_timeout = args.sanitizer_timeout or cutoff
    tests = start_tests(outdir, args.dry_run, args.tests_timeout) if "tests" in sections else None
    sanitizer = (start_sanitizer(outdir, args.dry_run, args.sanitizer_timeout) if "sanitizer" in sections
                 else None)
    compiled = start_torch_compile(args, outdir) if "speed" in sections else None
    if "parity" in sections:
        say("parity: GPU fits against CPU fits")
        try:
            with np.errstate(over="ignore"):   # the simulator hashes dropout masks in NumPy uint64
                run_parity(report, args.dry_run, deadline)
        except Exception as exc:
            report.set("parity", "error", f"{type(exc).__name__}: {exc}")
    if tests is not None:
        say("waiting for the test suite")
        finish_tests(report, tests, outdir)
    if sanitizer is not None:
        finish_sanitizer(report, sanitizer)
    if "speed" in sections:
        say("speed")
        try:
            run_speed(report, args, deadline - (0 if args.dry_run else 10))
        except Exception as exc:
            report.set("speed", "error", f"{type(exc).__name__}: {exc}")
        try:
            finish_torch_compile(report, compiled, outdir, deadline)
        except Exception as exc:
            report.set("speed", "error", f"{type(exc).__name__}: {exc}")
    report.data["seconds"] = round(time.perf_counter() - t_start, 1)
    report.save()
    table = format_table(report.data)
    (outdir / "gpu_check.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

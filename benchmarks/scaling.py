"""How cost scales with the number of points, the dimension and the number of devices: `log_prob`
(time, throughput and peak memory, with the batches of `_solvers.POINTS_PER_BATCH` points that keep
memory bounded), training on data bigger than memory (a NumPy memmap read by `nsi.batches`),
training throughput against d (up to 784, with an image network) and against the number of
(simulated) devices.

The flow is the exact oracle flow to an 8-component Gaussian mixture in d dimensions (closed-form
velocity, docs/math.md section 6; no training, so the numbers are the solver's alone), with the
default settings (adaptive Tsit5, exact divergence, float32). For each N a fresh Python process
draws N points of the mixture, compiles `flow.log_prob_with_info` for them (ahead of time, without
running it), times one evaluation on all of them, and reports its wall-clock, points per second and
the process's peak resident memory (`resource.getrusage(...).ru_maxrss`, which includes JAX and the
compiled code: the baseline row, N = 1000, shows that share), with the solver steps per point. Rows
marked "one vmap" raise the batch size to N (at N = 10^4 and 10^5), so every point's solver state
is held at once: the memory that log_prob's batching bounds.

Training (`--studies train`): for each N a float32 memmap of N x 8 rows (a two-component Gaussian
mixture, written in chunks to a temporary file) is trained on in a fresh process: `build_flow` on
its first 10^4 rows, then `train` on `nsi.batches(key, memmap, 512)` for 1000 steps (validation on
2000 held-out rows). Reported: wall-clock, steps per second and peak resident memory; for
comparison, the same training with the whole memmap loaded as one array (`np.asarray(memmap)` then
`train(key, flow, array)`, the in-memory route), at the sizes that fit.

Training against the dimension (`--studies dims`): d = 2 (two moons), 64 (scikit-learn's 8x8
digits) and 784 (the digits upscaled to 28x28), each with `build_flow`'s default `FieldMLP` and
(images) a `FieldUNet`; steps per second of `train` with batches of 128 after a compiling call, and
peak memory. Against the number of devices (`--studies devices`): the same training under
`jax.set_mesh(nsi.data_mesh())` with 1 and 2 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`), which share this machine's cores.

Run: `.venv/bin/python benchmarks/scaling.py` (the log_prob and training studies: log_prob for N up
to 10^6 at d = 2 and 8, tens of minutes; training for N = 10^5 to 10^7); `--studies train` or
`--studies log_prob` for one, `--studies dims,devices` for the other two (scikit-learn: `make
install-bench`); `--quick` for small sizes that write nothing. The tables go to
`docs/benchmarks.md` between the markers `<!-- scaling:start -->` / `<!-- scaling:end -->`
(log_prob), `scaling-train`, `scaling-dims` and `scaling-devices`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_io import write_docs_region  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- scaling:start -->", "<!-- scaling:end -->"
TRAIN_START, TRAIN_END = "<!-- scaling-train:start -->", "<!-- scaling-train:end -->"
TRAIN_DIM, TRAIN_STEPS, TRAIN_BATCH = 8, 1000, 512

TRAIN_CHILD = r"""
import json, resource, sys, time
import jax, numpy as np
import numpyro_si as nsi

path, route = sys.argv[1], sys.argv[4]
n, dim, steps, batch = (int(a) for a in (sys.argv[2], sys.argv[3], sys.argv[5], sys.argv[6]))
data = np.memmap(path, dtype=np.float32, mode="r", shape=(n + 2000, dim))
held_out, rows = np.asarray(data[n:]), data[:n]
flow = nsi.build_flow(jax.random.key(0), np.asarray(rows[:10_000]))
tic = time.perf_counter()
if route == "stream":
    source = nsi.batches(jax.random.key(1), rows, batch)
    flow, history = nsi.train(jax.random.key(2), flow, source, num_steps=steps, val_data=held_out,
                              show_progress=False)
else:
    flow, history = nsi.train(jax.random.key(2), flow, np.asarray(rows), num_steps=steps,
                              batch_size=batch, val_data=held_out, show_progress=False)
seconds = time.perf_counter() - tic
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kb = lambda name: float(status[name].split()[0]) if name in status else float("nan")
print(json.dumps({"n": n, "dim": dim, "route": route, "seconds": seconds,
                  "steps": int(history.num_steps), "val_loss": float(history.val_loss[-1]),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": kb("RssAnon") / 1024, "file_mb": kb("RssFile") / 1024}))
"""


def write_memmap(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """N + 2000 rows of a two-component Gaussian mixture, written a million rows at a time."""
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n + 2000, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, n + 2000, 1_000_000):
        m = min(1_000_000, n + 2000 - start)
        sign = np.where(rng.random((m, 1)) < 0.3, -1.0, 1.0)
        out[start:start + m] = (2.0 * sign + 0.5 * rng.standard_normal((m, dim))).astype(np.float32)
    out.flush()
    del out


def run_child(script: str, *args) -> dict:
    """`script` in a fresh Python process with `args`; its last line of output, as JSON."""
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def measure_training(path: Path, n: int, route: str) -> dict:
    return run_child(TRAIN_CHILD, path, n, TRAIN_DIM, route, TRAIN_STEPS, TRAIN_BATCH)


def render_training(rows, load, command):
    lines = [
        "## training on data bigger than memory: peak memory against the number of points",
        "",
        f"Command: {command}. Machine: {machine()}; 1-minute load average {load[0]:.2f} at the"
        f" start, {load[1]:.2f} at the end. A float32 memmap of N x {TRAIN_DIM} rows on disk;"
        f" `build_flow` on its first 10^4 rows, then {TRAIN_STEPS} steps of `train` with batches"
        f" of {TRAIN_BATCH}, validated on 2000 held-out rows. \"stream\": `train(key, flow,"
        " nsi.batches(key, memmap, 512))`, reading one round of batches at a time; \"in"
        " memory\": `train(key, flow, np.asarray(memmap))`. Peak memory is the whole process's"
        " resident set (JAX, compiled code and the memmap's pages read so far included); at the"
        " end it splits into anonymous memory (arrays, code: what the process holds) and"
        " file-backed pages (the memmap's pages the kernel keeps cached and may evict). Each row"
        " is a fresh process. The script's docstring has the set-up.",
        "",
        "| points | route | seconds | steps per second | peak memory (MB) | at the end:"
        " anonymous / file-backed (MB) | final validation loss |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['n']:,} | {'stream' if row['route'] == 'stream' else 'in memory'} |"
            f" {row['seconds']:.1f} | {row['steps'] / row['seconds']:,.0f} |"
            f" {row['peak_mb']:.0f} | {row['anon_mb']:.0f} / {row['file_mb']:.0f} |"
            f" {row['val_loss']:.4f} |"
        )
    return lines

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
import numpyro_si as nsi
from numpyro_si import _solvers
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

n, dim, chunked = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "chunked"
if not chunked:  # one vmap over all the points: every point's solver state at once
    _solvers.POINTS_PER_BATCH = n
mixture = GaussianMixture.random(jax.random.key(0), dim, 8)
oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), mixture)
flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=dim)
x, _ = mixture.sample(jax.random.key(1), n)
log_prob = jax.jit(flow.log_prob_with_info).lower(x).compile()  # compiled, not run
tic = time.perf_counter()
values, info = jax.block_until_ready(log_prob(x))
seconds = time.perf_counter() - tic
print(json.dumps({"n": n, "dim": dim, "seconds": seconds, "chunked": chunked,
                  "finite": bool(jnp.all(jnp.isfinite(values))),
                  "steps_mean": float(jnp.mean(info.num_steps)),
                  "steps_max": int(jnp.max(info.num_steps)),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "points_per_batch": _solvers.POINTS_PER_BATCH}))
"""


def measure(n: int, dim: int, chunked: bool = True) -> dict:
    return run_child(CHILD, n, dim, "chunked" if chunked else "whole")


def render(rows, load, command):
    batch = next(row["points_per_batch"] for row in rows if row["chunked"])
    lines = [
        "## log_prob at scale: time and peak memory against the number of points",
        "",
        f"Command: {command}. Machine: {machine()}; 1-minute load average {load[0]:.2f} at the"
        f" start, {load[1]:.2f} at the end. The exact oracle flow to an 8-component Gaussian"
        " mixture (no training), default settings (adaptive Tsit5, exact divergence, float32)."
        f" \"batches\": log_prob's default, a vmap over batches of {batch:,} points run one"
        " after another; \"one vmap\": the batch size raised to the number of points, so every"
        " point's solver state is held at once (the memory that batching bounds). Steps: solver"
        " steps per point (accepted and rejected), mean and largest. Peak memory is the whole"
        " process's (JAX and compiled code included); each row is a fresh process. The"
        " script's docstring has the set-up.",
        "",
        "| d | points | map | seconds | points per second | steps mean (max) |"
        " peak memory (MB) | all finite |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['dim']} | {row['n']:,} | {'batches' if row['chunked'] else 'one vmap'} |"
            f" {row['seconds']:.2f} | {row['n'] / row['seconds']:,.0f} |"
            f" {row['steps_mean']:.1f} ({row['steps_max']}) | {row['peak_mb']:.0f} |"
            f" {row['finite']} |"
        )
    return lines


DIMS_START, DIMS_END = "<!-- scaling-dims:start -->", "<!-- scaling-dims:end -->"
DEVICES_START, DEVICES_END = "<!-- scaling-devices:start -->", "<!-- scaling-devices:end -->"
DIMS_STEPS, DIMS_BATCH = 200, 128

# Training throughput against the dimension: one data set per d, the default FieldMLP or a
# FieldUNet; the first `train` call compiles, the second (from where it ended) is timed.
DIMS_CHILD = r"""
import json, os, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
import numpyro_si as nsi

dim, network, steps, batch, devices = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                       int(sys.argv[4]), int(sys.argv[5]))
rng = np.random.default_rng(0)
if dim == 2:
    data = np.asarray(nsi.datasets.two_moons(jax.random.key(0), 4096))
    side = None
else:
    from sklearn.datasets import load_digits
    side = int(round(dim ** 0.5))
    small = load_digits().data.reshape(-1, 8, 8).astype(np.float32) / 16.0
    images = np.asarray(jax.image.resize(jnp.asarray(small), (small.shape[0], side, side),
                                         "linear")) if side != 8 else small
    data = images.reshape(len(images), dim) + 0.02 * rng.standard_normal((len(images), dim))
data = data.astype(np.float32)
key = jax.random.key(1)
velocity = (nsi.FieldUNet((1, side, side), widths=(16, 32), patch=2 if side > 8 else 1,
                          key=key) if network == "unet" else None)
options = dict(batch_size=batch, validation=nsi.Validation(fraction=0.0), show_progress=False)
mesh = nsi.data_mesh() if devices > 1 else None

def run():
    flow = nsi.build_flow(key, data, velocity_network=velocity)
    flow, _ = nsi.train(jax.random.key(2), flow, data, num_steps=20, **options)  # compiles
    tic = time.perf_counter()
    flow, history = nsi.train(jax.random.key(3), flow, data, num_steps=steps, **options)
    jax.block_until_ready(jax.tree.leaves(flow.velocity))
    return flow, history, time.perf_counter() - tic

if mesh is None:
    flow, history, seconds = run()
else:
    with jax.set_mesh(mesh):
        flow, history, seconds = run()
params = sum(x.size for x in jax.tree.leaves(flow.velocity) if hasattr(x, "size"))
print(json.dumps({"dim": dim, "network": network, "devices": jax.device_count(),
                  "steps": int(history.num_steps), "seconds": seconds, "params": int(params),
                  "batch": batch, "loss": float(history.train_loss[-1]),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_dims(dim: int, network: str, devices: int = 1, batch: int = DIMS_BATCH) -> dict:
    env = None
    if devices > 1:
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                   + f" --xla_force_host_platform_device_count={devices}").strip())
    result = subprocess.run([sys.executable, "-c", DIMS_CHILD, str(dim), network,
                             str(DIMS_STEPS), str(batch), str(devices)],
                            capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def render_dims(rows, load, command):
    lines = [
        "## training throughput against the dimension",
        "",
        f"Command: {command}. Machine: {machine()}; 1-minute load average {load[0]:.2f} at the"
        f" start, {load[1]:.2f} at the end. d = 2: `nsi.datasets.two_moons` (4096 points);"
        " d = 64 and 784: scikit-learn's 8x8 digits (1797), as they are or upscaled to 28x28,"
        " plus N(0, 0.02^2) pixel noise. \"FieldMLP\": `build_flow`'s default network for d;"
        " \"FieldUNet\": `nsi.FieldUNet((1, side, side), widths=(16, 32))`, with `patch=2` at"
        " 28x28. Batches of"
        f" {rows[0]['batch']}, no validation; a first `train` of 20 steps compiles, the next"
        f" {DIMS_STEPS} are timed. Peak memory is the whole process's; each row is a fresh"
        " process.",
        "",
        "| d | network | parameters | steps per second | points per second | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rate = row["steps"] / row["seconds"]
        name = "FieldUNet" if row["network"] == "unet" else "FieldMLP"
        lines.append(
            f"| {row['dim']} | {name} | {row['params']:,} | {rate:.1f} |"
            f" {rate * row['batch']:,.0f} | {row['peak_mb']:.0f} |"
        )
    return lines


def render_devices(rows, load, command):
    one = {(r["dim"], r["network"]): r["steps"] / r["seconds"] for r in rows if r["devices"] == 1}
    lines = [
        "## training throughput against the number of devices",
        "",
        f"Command: {command}. Machine: {machine()}; 1-minute load average {load[0]:.2f} at the"
        f" start, {load[1]:.2f} at the end. Simulated CPU devices"
        " (`XLA_FLAGS=--xla_force_host_platform_device_count=K`) sharing this machine's cores,"
        " training under `jax.set_mesh(nsi.data_mesh())` (each batch split over the K"
        " devices); otherwise as the table above. On one machine the devices share the same"
        " cores, so this measures the cost of splitting (partitioning, the gradient"
        " reduction), not a speed-up; real devices (GPUs, hosts) each bring their own compute.",
        "",
        "| d | network | batch | devices | steps per second | against one device |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rate = row["steps"] / row["seconds"]
        name = "FieldUNet" if row["network"] == "unet" else "FieldMLP"
        lines.append(
            f"| {row['dim']} | {name} | {row['batch']} | {row['devices']} | {rate:.1f} |"
            f" {rate / one[(row['dim'], row['network'])]:.2f} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N; writes nothing")
    parser.add_argument("--dims", default="2,8", help="dimensions of the log_prob study")
    parser.add_argument("--studies", default="log_prob,train")
    args = parser.parse_args(argv)
    studies = args.studies.split(",")
    unknown = set(studies) - {"log_prob", "train", "dims", "devices"}
    if unknown:
        parser.error(f"unknown studies {sorted(unknown)}; choose from log_prob, train, dims,"
                     " devices")
    options = "".join(f" --{name} {value}" for name, value, default in (
        ("dims", args.dims, "2,8"), ("studies", args.studies, "log_prob,train"))
        if value != default)
    command = f"`.venv/bin/python benchmarks/scaling.py{options}`"
    if "log_prob" in studies:
        sizes = (1000, 10_000) if args.quick else (1000, 10_000, 100_000, 1_000_000)
        whole = (10_000,) if args.quick else (10_000, 100_000)
        load_start = os.getloadavg()[0]
        rows = []
        for dim in (int(d) for d in args.dims.split(",")):
            for n, chunked in [(n, True) for n in sizes] + [(n, False) for n in whole]:
                rows.append(measure(n, dim, chunked))
                print(rows[-1], flush=True)
        lines = render(rows, (load_start, os.getloadavg()[0]), command)
        print("\n".join(lines))
        if not args.quick:
            write_docs_region(OUT, START, END, lines)
    if "train" in studies:
        sizes = ((10_000, ("stream", "memory")),) if args.quick else (
            (100_000, ("stream", "memory")), (1_000_000, ("stream", "memory")),
            (10_000_000, ("stream", "memory")))
        load_start = os.getloadavg()[0]
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for n, routes in sizes:
                path = Path(folder) / f"data-{n}.f32"
                write_memmap(path, n, TRAIN_DIM)
                for route in routes:
                    rows.append(measure_training(path, n, route))
                    print(rows[-1], flush=True)
                path.unlink()
        lines = render_training(rows, (load_start, os.getloadavg()[0]), command)
        print("\n".join(lines))
        if not args.quick:
            write_docs_region(OUT, TRAIN_START, TRAIN_END, lines)
    if "dims" in studies:
        cases = ((2, "mlp"), (64, "mlp"), (64, "unet")) if args.quick else (
            (2, "mlp"), (64, "mlp"), (64, "unet"), (784, "mlp"), (784, "unet"))
        load_start = os.getloadavg()[0]
        rows = []
        for dim, network in cases:
            rows.append(measure_dims(dim, network))
            print(rows[-1], flush=True)
        lines = render_dims(rows, (load_start, os.getloadavg()[0]), command)
        print("\n".join(lines))
        if not args.quick:
            write_docs_region(OUT, DIMS_START, DIMS_END, lines)
    if "devices" in studies:
        cases = ((64, "mlp", 512),) if args.quick else ((64, "mlp", 512), (784, "unet", 128))
        load_start = os.getloadavg()[0]
        rows = []
        for dim, network, batch in cases:
            for devices in (1, 2):
                rows.append(measure_dims(dim, network, devices, batch))
                print(rows[-1], flush=True)
        lines = render_devices(rows, (load_start, os.getloadavg()[0]), command)
        print("\n".join(lines))
        if not args.quick:
            write_docs_region(OUT, DEVICES_START, DEVICES_END, lines)


if __name__ == "__main__":
    main()

"""Held-out evaluation of a trained density model (`_density_methods.Trained`): NLL, throughput,
field evaluations; and the same method refitted with further training keys."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from _density_data import Dataset, standard_error
from _density_methods import METHODS, Trained, _timed


def chunked_log_prob(log_prob, x: np.ndarray, chunk: int = 1000):
    """log_prob over x in equal chunks (one compilation); returns (values, nfe or None,
    seconds of the timed pass, points evaluated in it). The first chunk is a warm-up."""
    n = x.shape[0]
    chunk = min(chunk, n)
    n_chunks = math.ceil(n / chunk)
    padded = np.concatenate([x, np.repeat(x[:1], n_chunks * chunk - n, axis=0)])
    pieces = [jnp.asarray(padded[i * chunk : (i + 1) * chunk]) for i in range(n_chunks)]
    jax.block_until_ready(log_prob(pieces[0]))
    tic = time.perf_counter()
    outputs = [log_prob(p) for p in pieces]
    jax.block_until_ready(outputs)
    elapsed = time.perf_counter() - tic
    values = np.concatenate([np.asarray(v) for v, _ in outputs])[:n]
    nfe = None
    if outputs[0][1] is not None:
        nfe = np.concatenate([np.asarray(e) for _, e in outputs])[:n]
    return values, nfe, elapsed, n_chunks * chunk


def heldout_nll(values: np.ndarray) -> float:
    """The NLL of per-point held-out log densities (inf if any is not finite)."""
    return float(-np.mean(values)) if np.isfinite(values).all() else float("inf")


def evaluate(trained: Trained, data: Dataset, key, n_samples: int = 2000
             ) -> tuple[dict, np.ndarray | None, np.ndarray]:
    """The row of a trained method, its samples (or None) and its held-out log densities."""
    values, nfe, elapsed, n_eval = chunked_log_prob(trained.log_prob, data.test)
    finite = np.isfinite(values)
    row = {
        "params": trained.n_params,
        "train_time": trained.train_time,
        "train_cpu": trained.train_cpu,
        "steps": trained.steps,
        "steps_per_s": trained.steps / trained.train_time,
        "nll": heldout_nll(values),
        "nll_se": standard_error(values) if finite.all() else float("nan"),
        "n_failed": int((~finite).sum()),
        "log_prob_per_s": n_eval / elapsed,
        "nfe_log_prob": float(np.mean(nfe)) if nfe is not None else None,
        **{k: v for k, v in trained.extra.items() if isinstance(v, (int, float, bool, list))},
    }
    samples = None
    if trained.sample is not None and n_samples > 0:
        n = min(n_samples, max(data.test.shape[0], 500))
        jax.block_until_ready(trained.sample(jax.random.fold_in(key, 1), n))
        samples, seconds, _ = _timed(trained.sample, key, n)
        row["sample_per_s"] = n / seconds
        samples = np.asarray(samples)
        if trained.nfe_sample is not None:
            row["nfe_sample"] = float(np.mean(np.asarray(trained.nfe_sample(key, 1000))))
    return row, samples, values


def more_keys(method: str, key, data: Dataset, budget: float, first: np.ndarray, seeds: int
              ) -> tuple[list[float], list[float], np.ndarray | None]:
    """Fit `method` (an id of `METHODS`) again with keys 1..seeds-1 (folded into the first
    fit's `key`) under the same budget; returns the NLL of every key's fit (the first from
    `first`, its held-out log densities), the training CPU seconds of the extra fits and the
    per-point log densities averaged over keys (None if any is not finite). Only the held-out
    NLL is measured for the extra fits."""
    values, cpu = [first], []
    for j in range(1, seeds):
        trained = METHODS[method](jax.random.fold_in(key, j), data.train, budget)
        values.append(chunked_log_prob(trained.log_prob, data.test)[0])
        cpu.append(float(trained.train_cpu))
        print(f"  {method:18s} key {j}: train {trained.train_cpu:5.1f}s CPU ({trained.steps}"
              f" steps)  NLL {heldout_nll(values[-1]):.3f}", flush=True)
    nlls = [heldout_nll(v) for v in values]
    stacked = np.stack(values).astype(np.float64)
    return nlls, cpu, stacked.mean(0) if np.isfinite(stacked).all() else None

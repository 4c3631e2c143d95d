"""Benchmark the KD loss: eager PyTorch, torch.compile, kdedu's fused kernels, and Liger-Kernel if installed.

    python benchmarks/kd_loss.py                 # on a GPU: the full grid; on a CPU: a small smoke run
    python benchmarks/kd_loss.py --out DIR       # where the JSON and Markdown results go
    python benchmarks/kd_loss.py --no-compile    # skip torch.compile (slow to compile on a CPU)
    python benchmarks/kd_loss.py --loss kd reverse jsd   # also the reverse KL and GKD's JSD (beta = 0.5)

For every size it measures forward + backward of the loss (the student's logits need a gradient, the
teacher's do not):

* **time**: the median over ``--reps`` runs (after warm-up), in milliseconds;
* **memory**: on a GPU, the peak allocated memory beyond the inputs; everywhere, the bytes the loss keeps
  alive for its backward pass (saved tensors, not counting the inputs);
* **bandwidth**: effective GB/s = the compulsory traffic (read student and teacher logits, write the
  student's gradient: 3 elements per logit) divided by the time, and that as a % of the GPU's data-sheet
  DRAM bandwidth (and of a measured device-to-device copy).

``--loss`` picks the divergences (default: ``kd``): ``reverse`` times ``fused_reverse_kd_loss`` (the KD
kernel with the logits exchanged) and ``jsd`` times ``fused_generalized_jsd_loss`` (three sweeps per row)
against their eager forms in :mod:`kdedu.kernels.bench` (and Liger-Kernel's JSD on log-probabilities).

The fused linear loss (``lm_head`` projection + KD loss, H = 4096 on a GPU) is compute-bound, so it gets
TFLOP/s (8·N·V·H flops: two forward projections, two backward matmuls for the student) instead.

Results go to ``kd_loss-<device>.json`` and ``kd_loss-<device>.md`` in ``--out`` (default
``benchmarks/results`` on a GPU, a temporary folder on a CPU, whose numbers say nothing about a GPU).
Speed and memory are measured here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import re
import sys
import tempfile
from pathlib import Path

import torch

from kdedu.kernels import (
    backend,
    bench,
    fused_generalized_jsd_loss,
    fused_kd_loss,
    fused_linear_kd_loss,
    fused_reverse_kd_loss,
)

GPU_GRID = {"rows": [4096, 8192], "vocab": [32000, 128256], "hidden": 4096, "reps": 20}
CPU_GRID = {"rows": [256], "vocab": [4096], "hidden": 256, "reps": 5}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
T = 2.0
BETA = 0.5  # GKD's JSD
LOSSES = ("kd", "reverse", "jsd")


# ------------------------------------------------------------------------------------------------
# the contenders
# ------------------------------------------------------------------------------------------------
def kd_methods(device: str, compile_: bool) -> dict:
    methods = {"eager": bench.eager_kd_loss}
    if compile_:
        methods["torch.compile"] = torch.compile(bench.eager_kd_loss)
    methods["kdedu"] = lambda s, t, T: fused_kd_loss(s, t, T)
    if device == "cuda":
        try:  # Liger's KL takes log-probabilities: the two log_softmax stay eager
            from liger_kernel.transformers.kl_div import LigerKLDIVLoss

            liger_kl = LigerKLDIVLoss(reduction="batchmean", log_target=True)

            def liger(s, t, T):
                return liger_kl(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1)) * T * T

            methods["liger KLDiv (+eager log_softmax)"] = liger
        except Exception as err:  # not installed, or an API that moved
            print(f"Liger-Kernel KL: skipped ({type(err).__name__}: {err})")
    return methods


def reverse_methods(device: str, compile_: bool) -> dict:
    methods = {"eager": bench.eager_reverse_kd_loss}
    if compile_:
        methods["torch.compile"] = torch.compile(bench.eager_reverse_kd_loss)
    methods["kdedu"] = lambda s, t, T: fused_reverse_kd_loss(s, t, T)
    return methods


def jsd_methods(device: str, compile_: bool) -> dict:
    def eager(s, t, T):
        return bench.eager_generalized_jsd_loss(s, t, BETA, T)

    methods = {"eager": eager}
    if compile_:
        methods["torch.compile"] = torch.compile(eager)
    methods["kdedu"] = lambda s, t, T: fused_generalized_jsd_loss(s, t, BETA, T)
    if device == "cuda":
        try:  # Liger's JSD takes log-probabilities (student first), beta weighing the teacher as in GKD
            from liger_kernel.transformers.jsd import LigerJSD

            liger_jsd = LigerJSD(beta=BETA)

            def liger(s, t, T):
                return liger_jsd(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1))

            methods["liger JSD (+eager log_softmax)"] = liger
        except Exception as err:
            print(f"Liger-Kernel JSD: skipped ({type(err).__name__}: {err})")
    return methods


DIVERGENCES = {"kd": kd_methods, "reverse": reverse_methods, "jsd": jsd_methods}


def eager_linear(hs, ws, ht, wt, T):
    return bench.eager_kd_loss(hs @ ws.T, ht @ wt.T, T)


def linear_methods(device: str, compile_: bool) -> dict:
    methods = {"eager": eager_linear}
    if compile_:
        methods["torch.compile"] = torch.compile(eager_linear)
    methods["kdedu"] = lambda hs, ws, ht, wt, T: fused_linear_kd_loss(hs, ws, ht, wt, T)
    if device == "cuda":
        try:  # generalized JSD with beta = 0 is the forward KL(teacher || student), without the T^2 factor
            from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

            liger_jsd = LigerFusedLinearJSD(jsd_beta=0.0, temperature=T)
            methods["liger FusedLinearJSD(beta=0)"] = lambda hs, ws, ht, wt, T: liger_jsd(hs, ws, ht, wt, None)
        except Exception as err:
            print(f"Liger-Kernel fused linear JSD: skipped ({type(err).__name__}: {err})")
    return methods


# ------------------------------------------------------------------------------------------------
# measuring one case
# ------------------------------------------------------------------------------------------------
def _free(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(fn, inputs, grads_of, device, reps, hooks=True) -> dict:
    """Time fn(*inputs).backward(), its peak memory (GPU) and the bytes it holds for backward (``hooks``:
    whether saved-tensor hooks see its saved tensors; torch.compile's graphs bypass them)."""

    def step():
        for x in grads_of:
            x.grad = None
        fn(*inputs, T).backward()

    try:
        step()  # warm-up (and compilation)
        for x in grads_of:
            x.grad = None
        if device == "cuda":  # peak beyond the inputs, the gradients (.grad) included
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = None
        for x in grads_of:
            x.grad = None
        try:
            held = bench.held_bytes(lambda *a: fn(*a, T), *inputs) / 2**20 if hooks else None
        except Exception:  # saved-tensor hooks are not supported everywhere
            held = None
        ms = bench.time_ms(step, reps=reps, warmup=1, device=device)
        return {"ms": ms, "peak_mib": None if peak is None else peak / 2**20, "held_mib": held}
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as err:  # report and carry on with the other contenders
        return {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    finally:
        for x in grads_of:
            x.grad = None
        _free(device)


def run(device: str, grid: dict, compile_: bool, peak_bw: float | None, copy_bw: float | None,
        which: tuple = ("kd",)) -> list[dict]:
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for dname, dtype in DTYPES.items():
        for n in grid["rows"]:
            for v in grid["vocab"]:
                s = (3 * torch.randn(n, v, device=device, generator=g)).to(dtype).requires_grad_(True)
                t = (3 * torch.randn(n, v, device=device, generator=g)).to(dtype)
                contenders = [(kind, name, fn) for kind in which
                              for name, fn in DIVERGENCES[kind](device, compile_).items()]
                for loss, name, fn in contenders:
                    r = {"loss": loss, "method": name, "dtype": dname, "N": n, "V": v,
                         **measure(fn, (s, t), (s,), device, grid["reps"], hooks="compile" not in name)}
                    if "ms" in r:
                        compulsory = 3 * s.element_size() * n * v
                        r["eff_GBps"] = compulsory / (r["ms"] / 1e3) / 1e9
                        r["pct_peak_bw"] = None if peak_bw is None else 100 * compulsory / (r["ms"] / 1e3) / peak_bw
                        r["pct_copy_bw"] = None if copy_bw is None else 100 * compulsory / (r["ms"] / 1e3) / copy_bw
                    print(_line(r))
                    rows.append(r)
                del s, t
                _free(device)
    h = grid["hidden"]
    for dname, dtype in (DTYPES.items() if "kd" in which else ()):
        for n in grid["rows"]:
            for v in grid["vocab"]:
                try:
                    hs = torch.randn(n, h, device=device, generator=g).to(dtype).requires_grad_(True)
                    ws = (torch.randn(v, h, device=device, generator=g) / h**0.5).to(dtype).requires_grad_(True)
                    ht = torch.randn(n, h, device=device, generator=g).to(dtype)
                    wt = (torch.randn(v, h, device=device, generator=g) / h**0.5).to(dtype)
                except torch.OutOfMemoryError:
                    rows.append({"loss": "linear+kd", "method": "(inputs)", "dtype": dname, "N": n, "V": v, "H": h,
                                 "error": "out of memory"})
                    continue
                for name, fn in linear_methods(device, compile_).items():
                    r = {"loss": "linear+kd", "method": name, "dtype": dname, "N": n, "V": v, "H": h,
                         **measure(fn, (hs, ws, ht, wt), (hs, ws), device, grid["reps"],
                                   hooks="compile" not in name)}
                    if "ms" in r:
                        r["TFLOPs"] = 8 * n * v * h / (r["ms"] / 1e3) / 1e12
                    print(_line(r))
                    rows.append(r)
                del hs, ws, ht, wt
                _free(device)
    return rows


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------
def _fmt(x, spec):
    if x is None:
        width = re.match(r"\d*", spec).group()
        return "—".rjust(int(width)) if width else "—"
    return format(x, spec)


def _line(r: dict) -> str:
    size = f"N={r['N']} V={r['V']}" + (f" H={r['H']}" if "H" in r else "")
    if "error" in r:
        return f"{r['loss']:9s} {r['dtype']} {size:28s} {r['method']:34s} {r['error']}"
    if r["loss"] in DIVERGENCES:
        extra = f"{_fmt(r.get('eff_GBps'), '8.1f')} GB/s"
    else:
        extra = f"{_fmt(r.get('TFLOPs'), '7.2f')} TFLOP/s"
    return (f"{r['loss']:9s} {r['dtype']} {size:28s} {r['method']:34s} {r['ms']:9.3f} ms  "
            f"peak {_fmt(r['peak_mib'], '8.1f')} MiB  held {_fmt(r['held_mib'], '8.1f')} MiB  {extra}")


def markdown(meta: dict, rows: list[dict]) -> str:
    out = [f"# KD loss benchmark: {meta['device']}", "",
           f"{meta['date']} · torch {meta['torch']} · triton {meta['triton']} · kdedu backend `{meta['backend']}` · "
           f"peak bandwidth: {meta['peak_bandwidth']} · measured copy: {_fmt(meta['copy_GBps'], '.0f')} GB/s", ""]
    if meta["smoke"]:
        out += ["**Smoke run on a CPU**: tiny sizes, says nothing about GPU performance.", ""]
    titles = {"kd": "KD loss", "reverse": "Reverse KL", "jsd": f"Generalized JSD (beta = {BETA})"}
    for loss in [name for name in DIVERGENCES if any(r["loss"] == name for r in rows)]:
        out += [f"## {titles[loss]} (forward + backward)", "",
                "| dtype | N | V | method | time (ms) | peak extra (MiB) | held for backward (MiB) | eff. GB/s "
                "| % peak BW |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if r["loss"] != loss:
                continue
            if "error" in r:
                out.append(f"| {r['dtype']} | {r['N']} | {r['V']} | {r['method']} | {r['error']} | | | | |")
                continue
            out.append(f"| {r['dtype']} | {r['N']} | {r['V']} | {r['method']} | {r['ms']:.3f} | "
                       f"{_fmt(r['peak_mib'], '.0f')} | {_fmt(r['held_mib'], '.1f')} | {r['eff_GBps']:.1f} | "
                       f"{_fmt(r['pct_peak_bw'], '.0f')} |")
        out.append("")
    if not any(r["loss"] == "linear+kd" for r in rows):
        return "\n".join(out + _NOTES)
    out += [f"## Linear projection + KD loss (H = {rows[-1].get('H', '—') if rows else '—'})", "",
            "| dtype | N | V | method | time (ms) | peak extra (MiB) | held for backward (MiB) | TFLOP/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["loss"] != "linear+kd":
            continue
        if "error" in r:
            out.append(f"| {r['dtype']} | {r['N']} | {r['V']} | {r['method']} | {r['error']} | | | |")
            continue
        out.append(f"| {r['dtype']} | {r['N']} | {r['V']} | {r['method']} | {r['ms']:.3f} | "
                   f"{_fmt(r['peak_mib'], '.0f')} | {_fmt(r['held_mib'], '.1f')} | {r['TFLOPs']:.3f} |")
    return "\n".join(out + [""] + _NOTES)


_NOTES = ["Effective GB/s counts the compulsory traffic only (read both logits, write one gradient: "
          "3 elements per logit); % peak BW divides it by the data-sheet DRAM bandwidth. \"Held for backward\" "
          "is measured with saved-tensor hooks, which torch.compile's graphs bypass (—).", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for kd_loss-<device>.json/.md")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per case")
    p.add_argument("--loss", nargs="+", choices=LOSSES, default=["kd"],
                   help="divergences to time (default: kd; the fused linear loss runs with kd)")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke = device == "cpu"
    grid = dict(CPU_GRID if smoke else GPU_GRID)
    if args.reps:
        grid["reps"] = args.reps
    if smoke:
        print("No GPU here: a SMOKE RUN at tiny sizes on the CPU (kdedu uses its chunked PyTorch path). "
              "It checks that the script works; its numbers say nothing about GPU performance.")
        torch.set_num_threads(max(1, torch.get_num_threads()))
    peak_bw, bw_label = bench.peak_bandwidth() if device == "cuda" else (None, "n/a (CPU)")
    copy_bw = bench.copy_bandwidth(device) if device == "cuda" else None
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    meta = {"device": name, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "triton": triton_version, "python": sys.version.split()[0],
            "backend": backend(torch.empty(1, device=device)), "peak_bandwidth": bw_label,
            "peak_Bps": peak_bw, "copy_GBps": None if copy_bw is None else copy_bw / 1e9, "smoke": smoke,
            "grid": grid, "temperature": T, "losses": list(args.loss), "beta": BETA}
    print(f"{name}: peak bandwidth {bw_label}; kdedu backend {meta['backend']}")
    rows = run(device, grid, not args.no_compile, peak_bw, copy_bw, tuple(args.loss))

    out = args.out or (Path(tempfile.mkdtemp(prefix="kdedu-bench-")) if smoke else Path("benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    (out / f"kd_loss-{slug}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    (out / f"kd_loss-{slug}.md").write_text(markdown(meta, rows))
    print(f"wrote {out / f'kd_loss-{slug}.json'} and {out / f'kd_loss-{slug}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

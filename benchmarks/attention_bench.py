"""Sliding-window attention on CPU: mmctx next to dense SDPA, HF Longformer and FlexAttention.

Query i attends to keys j with |i - j| <= w. Per implementation, length N and pass (fwd,
fwd+bwd): median time, peak memory beyond the inputs, GFLOP/s on the useful band FLOPs and
their share of this machine's matmul rate, max abs error vs exact float64 band attention.
Every measurement runs in a fresh subprocess, so peak RSS is clean and crashes, OOM kills
and timeouts become rows instead of ending the run. Prints Markdown, writes JSON.

Reproduce (full sweep: an idle machine, roughly 20-40 minutes on 2 cores; bf16 is slower):

    python benchmarks/attention_bench.py                  # fp32, N = 1k..64k and mmctx at 2^20
    python benchmarks/attention_bench.py --dtype bf16

Quick check (a few minutes, mostly FlexAttention compiling):

    python benchmarks/attention_bench.py --sizes 1024 2048 --repeats 2 --no-million

Fair by construction: every implementation runs under the same allocator conditions, once
per --allocators mode. glibc's default malloc maps each large temporary fresh from the OS
(mmap) and returns it on free, so an implementation that allocates many large temporaries
pays page faults on every call; "tuned" turns that off (trim threshold 2 GiB, no mmap) for
every child alike, as a serving process would. Each row records the settings its child
actually ran with and how many bytes glibc held in mmapped blocks at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from subprocess import PIPE

import torch
import torch.nn.functional as F
from allocator import ALLOCATORS, allocator_env, allocator_state  # benchmarks/allocator.py

IMPLS = ("dense_sdpa_band", "dense_sdpa_nomask", "hf_longformer", "flex_compiled", "mmctx")
PASSES = ("fwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MILLION = 1 << 20
MARK = "@@attention_bench_row@@ "  # prefix of the one result line a --single child prints

EPILOG = """\
implementations:
  dense_sdpa_band    F.scaled_dot_product_attention with a dense N x N boolean band mask
  dense_sdpa_nomask  SDPA without any mask: full attention, a speed reference only (no error)
  hf_longformer      transformers' LongformerSelfAttention (attention_window = 2w); its q/k/v
                     Linear projections are swapped for pass-throughs of the benchmark's q, k, v,
                     so the time is attention only (plus the layout copies into its format)
  flex_compiled      torch.compile(flex_attention) with a sliding-window block mask; time
                     excludes compilation (compile time is reported separately); there is no
                     CPU backward, so fwd+bwd is recorded as unsupported
  mmctx              mmctx.nn.attention.sliding_window_attention(q, k, v, window)

allocators (--allocators):
  default            glibc malloc as it comes: blocks over the (dynamic) mmap threshold are
                     mapped per allocation and unmapped on free
  tuned              GLIBC_TUNABLES=glibc.malloc.trim_threshold=2147483648:glibc.malloc.mmap_max=0:
                     freed memory stays in the heap and is reused

columns: "extra MiB" is the subprocess's peak RSS minus its RSS right after q, k, v (and the
output gradient) were allocated, so it includes masks, modules, compile state and the output.

Run it on an otherwise idle machine: when other processes hold a core, multi-threaded kernels
can slow down ten-fold or more. Each row records cpu_busy_before (share of the cores others
used just before it started) in the JSON, and the report warns about busy rows.
"""
IMPL_HELP = "implementations to run, see below (default: all)"
MILLION_HELP = "also time mmctx fwd at N = 2^20 under no_grad"
ERR_HELP = "query rows checked against the reference: all if N is at most this, else the ends"
ERR_HELP += " and random 256-row blocks"
FOOTNOTE = """
GFLOP/s and % count the useful band FLOPs in every row (fwd 4*B*H*N*(2w+1)*D, fwd+bwd 2.5x).
hf_longformer: attention only, q/k/v projections bypassed. flex_compiled: compile excluded.
Errors: fwd output vs exact float64 band attention (none for dense_sdpa_nomask: not a band).
"""


class _HelpFormat(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # add "(default: X)" where there is an X to show
        shown = action.default not in (None, argparse.SUPPRESS) and "default" not in action.help
        return action.help + (" (default: %(default)s)" if shown else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    intro = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(description=intro, epilog=EPILOG, formatter_class=_HelpFormat)
    arg = p.add_argument
    arg(
        "--sizes",
        type=int,
        nargs="+",
        default=[1024, 4096, 16384, 65536],
        metavar="N",
        help="lengths",
    )
    arg("--batch", type=int, default=1, help="batch size B")
    arg("--heads", type=int, default=8, help="heads H")
    arg("--head-dim", type=int, default=64, help="head dim D")
    arg("--window", type=int, default=256, help="one-sided window w: i sees j iff |i-j| <= w")
    arg("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of q, k, v")
    arg("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), metavar="IMPL", help=IMPL_HELP)
    arg(
        "--allocators",
        nargs="+",
        choices=list(ALLOCATORS),
        default=list(ALLOCATORS),
        metavar="MODE",
        help="malloc settings every implementation runs under, one pass each; see below",
    )
    arg("--passes", nargs="+", choices=PASSES, default=list(PASSES), help="passes to time")
    arg("--repeats", type=int, default=3, help="timed calls after 1 warm-up; median reported")
    arg("--dense-max-n", type=int, default=16384, help="largest N for the dense rows, fwd")
    arg("--dense-bwd-max-n", type=int, default=16384, help="same, for fwd+bwd")
    arg("--million", action=argparse.BooleanOptionalAction, default=True, help=MILLION_HELP)
    arg("--timeout", type=float, default=300, help="seconds before a subprocess is killed")
    arg("--million-timeout", type=float, default=1200, help="--timeout for the N = 2^20 row")
    arg("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    arg("--err-rows", type=int, default=2048, help=ERR_HELP)
    arg("--matmul-seconds", type=float, default=2.0, help="seconds per dtype for matmul rate")
    arg("--out", type=Path, help="JSON file (default: benchmarks/results/attention_<dtype>.json)")
    arg("--single", help=argparse.SUPPRESS)  # internal: one measurement from a JSON spec
    return p.parse_args(argv)


# ---------------------------------------------------------------- implementations
# Each builder gets q, k, v (b, h, n, d) and w, and returns (attend, note): attend() computes
# the band attention of those tensors as (b, h, n, d); set-up work (masks, modules) happens here.


def build_dense_band(q, k, v, w):
    i = torch.arange(q.shape[2])
    band = (i[:, None] - i[None, :]).abs() <= w
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=band), ""


def build_dense_nomask(q, k, v, w):
    return lambda: F.scaled_dot_product_attention(q, k, v), ""


class _Given(torch.nn.Module):
    """Stands in for one of Longformer's q/k/v Linear layers: returns a tensor set beforehand."""

    def __init__(self) -> None:
        super().__init__()
        self.tensor = None

    def forward(self, _hidden):
        return self.tensor


def build_longformer(q, k, v, w):
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    b, h, n, d = q.shape
    n_pad = -(-n // (2 * w)) * (2 * w)  # Longformer wants N to be a multiple of 2w
    cfg = LongformerConfig(hidden_size=h * d, num_attention_heads=h, attention_window=[2 * w])
    cfg.attention_probs_dropout_prob = 0.0
    attn = LongformerSelfAttention(cfg, layer_id=0).to(q.dtype).eval()
    attn.query, attn.key, attn.value = _Given(), _Given(), _Given()
    hidden = torch.zeros(b, n_pad, h * d, dtype=q.dtype)  # only its shape is read
    mask = torch.zeros(b, n_pad)  # HF's convention: 0 = local attention, -10000 = padding
    mask[:, n:] = -10000.0

    def to_hf(t):  # (b, h, n, d) -> (n_pad, b, h*d), a fresh tensor (query is divided in place)
        t = t.permute(2, 0, 1, 3).reshape(n, b, h * d)
        return torch.cat([t, t.new_zeros(n_pad - n, b, h * d)])

    def attend():
        attn.query.tensor, attn.key.tensor, attn.value.tensor = to_hf(q), to_hf(k), to_hf(v)
        flags = {"is_index_masked": mask < 0, "is_index_global_attn": mask > 0}
        out = attn(hidden, attention_mask=mask, is_global_attn=False, **flags)[0]
        attn.query.tensor = attn.key.tensor = attn.value.tensor = None
        return out[:, :n].reshape(b, n, h, d).permute(0, 2, 1, 3)

    return attend, (f"inputs padded to N = {n_pad}" if n_pad != n else "")


def build_flex(q, k, v, w):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def in_band(_b, _h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= w

    start = time.perf_counter()
    block_mask = create_block_mask(in_band, None, None, q.shape[2], q.shape[2], device="cpu")
    built = time.perf_counter() - start
    compiled = torch.compile(flex_attention)
    return lambda: compiled(q, k, v, block_mask=block_mask), f"block mask built in {built:.2f} s"


def build_mmctx(q, k, v, w):
    from mmctx.nn.attention import sliding_window_attention

    return lambda: sliding_window_attention(q, k, v, w), ""


BUILDERS = {
    "dense_sdpa_band": build_dense_band,
    "dense_sdpa_nomask": build_dense_nomask,
    "hf_longformer": build_longformer,
    "flex_compiled": build_flex,
    "mmctx": build_mmctx,
}


# ---------------------------------------------------------------- one measurement (child)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def time_calls(step, repeats: int, budget_s: float):
    """One warm-up call, then up to `repeats` timed calls (fewer if they would overrun)."""
    times, out = [], None
    while len(times) < 1 + repeats:
        out = None  # free the previous output before the next call allocates one
        start = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            spare = budget_s - times[0]
            repeats = max(1, min(repeats, int(spare / max(times[0], 1e-9))))
    return times[0], times[1:], out


def band_error(out, q, k, v, w: int, max_rows: int, block: int = 256) -> tuple[float, int]:
    """Max abs difference from exact float64 band attention, block by block of query rows:
    all rows when N <= max_rows, else the blocks at both ends plus randomly chosen ones."""
    n, d = q.shape[2], q.shape[3]
    starts = torch.arange(0, n, block)
    if n > max_rows:
        ends = -(-(w + 1) // block)  # blocks whose rows see a sequence boundary
        middle = starts[ends:-ends]
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(middle), generator=gen)[: max_rows // block - 2 * ends]
        starts = torch.cat([starts[:ends], middle[pick], starts[-ends:]]).unique()
    q, k, v = q.detach(), k.detach(), v.detach()
    worst, rows = 0.0, 0
    for s in starts.tolist():
        e, lo, hi = min(s + block, n), max(0, s - w), min(n, s + block + w)
        scores = q[:, :, s:e].double() @ k[:, :, lo:hi].double().transpose(-1, -2)
        far = (torch.arange(s, e)[:, None] - torch.arange(lo, hi)[None, :]).abs() > w
        probs = (scores / math.sqrt(d)).masked_fill(far, -math.inf).softmax(-1)
        ref = probs @ v[:, :, lo:hi].double()
        worst = max(worst, (out[:, :, s:e].double() - ref).abs().max().item())
        rows += e - s
    return worst, rows


def measure(spec: dict) -> dict:
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    train = spec["pass"] == "fwd+bwd"
    shape = (spec["batch"], spec["heads"], spec["n"], spec["head_dim"])
    dtype = DTYPES[spec["dtype"]]
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=train) for _ in range(3))
    grad_out = torch.randn(shape, dtype=dtype) if train else None
    base_kib = rss_kib()
    attend, note = BUILDERS[spec["impl"]](q, k, v, spec["window"])

    def step():
        if not train:
            with torch.no_grad():
                return attend()
        q.grad = k.grad = v.grad = None
        attend().backward(grad_out)
        return None

    budget = 0.7 * spec["timeout"] - (time.perf_counter() - spec["t0"])  # time left to time
    first, times, out = time_calls(step, spec["repeats"], budget)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    row = {"time_s": statistics.median(times), "times_s": times, "first_call_s": first}
    row["allocator_state"] = allocator_state()  # while the output (or the gradients) lives
    row.update(extra_mib=(peak_kib - base_kib) / 1024, threads=torch.get_num_threads(), note=note)
    if spec["impl"] == "flex_compiled":
        row["compile_s"] = first - row["time_s"]
        row["note"] = f"compile {row['compile_s']:.1f} s (first call minus median); {note}"
    if out is not None and spec["impl"] != "dense_sdpa_nomask":
        err = band_error(out, q, k, v, spec["window"], spec["err_rows"])
        row["max_abs_err"], row["err_rows"] = err
    return row


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    spec["t0"] = time.perf_counter()  # the interpreter and torch have started: close enough
    try:
        row = {"status": "ok", **measure(spec)}
    except NotImplementedError as e:
        row = {"status": "unsupported", "note": f"{type(e).__name__}: {e}"}
    except Exception as e:  # recorded in the row; the parent keeps going
        row = {"status": "error", "note": f"{type(e).__name__}: {e}"}
    print(MARK + json.dumps(row), flush=True)


# ---------------------------------------------------------------- driver (parent)


def run_child(spec: dict) -> dict:
    timeout, started = spec["timeout"], time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--single", json.dumps(spec)]
    with tempfile.TemporaryDirectory(prefix="attn_bench_") as cache:
        env = allocator_env(spec["allocator"])  # the same for every implementation
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold compile every time
        # own session: on timeout the whole group goes, compile workers included
        pipes = {"stdout": PIPE, "stderr": PIPE, "text": True}
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, **pipes)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"status": "timeout", "note": f"killed after {timeout:.0f} s"}
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            return {**json.loads(line[len(MARK) :]), "wall_s": time.perf_counter() - started}
    tail = " | ".join((stderr or stdout).strip().splitlines()[-3:])
    why = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else "exit"
    return {"status": "crashed", "note": f"{why} {proc.returncode}: {tail}"}


def skip_reason(args, impl: str, n: int, pass_: str) -> str | None:
    if not impl.startswith("dense_"):
        return None
    fwd = pass_ == "fwd"
    cap = args.dense_max_n if fwd else args.dense_bwd_max_n
    flag = "--dense-max-n" if fwd else "--dense-bwd-max-n"
    return f"N > {flag} {cap} (quadratic time and memory)" if n > cap else None


def plan(args) -> list[tuple[str, str, int, str, float]]:
    """(allocator, impl, N, pass, timeout) of every row, in the order they run: for each N
    all implementations under one allocator mode, then the next mode."""
    jobs = []
    for n in args.sizes:
        for alloc in args.allocators:
            jobs += [(alloc, i, n, p, args.timeout) for i in args.impls for p in args.passes]
    if args.million and "mmctx" in args.impls:
        jobs += [
            (alloc, "mmctx", MILLION, "fwd", args.million_timeout) for alloc in args.allocators
        ]
    return jobs


def matmul_gflops(dtype: torch.dtype, seconds: float) -> tuple[float, int]:
    """Rate of a loop of size x size matmuls for `seconds`. Size 2048, unless one such call
    would take over half that time (bf16 without hardware support): then smaller."""
    size = 256
    while size < 2048:  # the next size up costs 8x the time of this one
        a = torch.randn(size, size, dtype=dtype)
        start = time.perf_counter()
        a @ a
        if 8 * (time.perf_counter() - start) > seconds / 2:
            break
        size *= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    c = a @ b  # warm-up
    iters, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b, out=c)
        iters += 1
    return 2 * size**3 * iters / elapsed / 1e9, size


def others_busy(seconds: float = 0.5) -> float:
    """Share of all cores busy over `seconds` while this benchmark sits idle (/proc/stat)."""

    def totals():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    (all0, idle0), _, (all1, idle1) = totals(), time.sleep(seconds), totals()
    return 1 - (idle1 - idle0) / max(all1 - all0, 1)


def machine_info(args) -> dict:
    import transformers

    with open("/proc/cpuinfo") as f:
        models = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_model": models[0] if models else "unknown",
        "cpu_count": os.cpu_count(),
        "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "torch_threads": torch.get_num_threads(),
        "cpu_busy_at_start": others_busy(),  # share of cores other processes use
    }
    rates = {name: matmul_gflops(dtype, args.matmul_seconds) for name, dtype in DTYPES.items()}
    info["matmul_gflops"] = {name: rate for name, (rate, _) in rates.items()}
    info["matmul_size"] = {name: size for name, (_, size) in rates.items()}
    return info


def add_rates(row: dict, args, peak_gflops: float) -> None:
    flops = 4 * args.batch * args.heads * row["n"] * (2 * args.window + 1) * args.head_dim
    flops *= 2.5 if row["pass"] == "fwd+bwd" else 1.0
    row["useful_gflop"] = flops / 1e9
    if row.get("time_s"):
        row["gflops"] = flops / 1e9 / row["time_s"]
        row["pct_matmul_peak"] = 100 * row["gflops"] / peak_gflops


def fmt(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def print_report(rows: list[dict], args, machine: dict) -> None:
    peak = machine["matmul_gflops"][args.dtype]
    shape = f"B={args.batch} H={args.heads} D={args.head_dim} w={args.window}"
    host = f"{machine['cpu_model']}, {machine['torch_threads']} threads"
    print(f"\n## Sliding-window attention, {args.dtype}, {shape}; {host}")
    size = machine["matmul_size"][args.dtype]
    print(f"\n{args.dtype} matmul rate ({size}^3): {peak:.1f} GFLOP/s\n")
    print(
        "| malloc | impl | N | pass | time s | extra MiB | GFLOP/s | % of matmul peak | max abs err |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["allocator"], r["impl"], r["n"], r["pass"]]
        cells.append(fmt(r.get("time_s"), ".4g") or r["status"])
        cells += [fmt(r.get("extra_mib"), ".0f"), fmt(r.get("gflops"), ".2f")]
        cells += [fmt(r.get("pct_matmul_peak"), ".1f"), fmt(r.get("max_abs_err"), ".1e")]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(FOOTNOTE)
    fp32_rate = machine["matmul_gflops"]["fp32"]
    if peak < fp32_rate:
        print(
            f"Note: {args.dtype} matmul is slower here than fp32 ({fp32_rate:.1f} GFLOP/s; no "
            f"native {args.dtype} on this CPU?), so % of matmul peak can exceed 100.\n"
        )
    busy = sum(r.get("cpu_busy_before", 0) > 0.2 for r in rows)
    if busy:
        print(
            f"Warning: before {busy} rows other processes kept over 20% of the CPU busy "
            "(cpu_busy_before in the JSON); with threads competing, times can be far too slow.\n"
        )
    for r in rows:
        if r.get("note"):
            where = f"{r['allocator']} {r['impl']} N={r['n']} {r['pass']}"
            print(f"- {where}: {r['note']}")
    print_ratios(rows, args)


def print_ratios(rows: list[dict], args) -> None:
    """Time of each implementation over mmctx's, both measured under the same allocator."""
    ok = [r for r in rows if r["status"] == "ok"]
    t = {(r["allocator"], r["impl"], r["n"], r["pass"]): r["time_s"] for r in ok}

    def ratio(alloc, impl, n, pass_):
        num, den = t.get((alloc, impl, n, pass_)), t.get((alloc, "mmctx", n, pass_))
        return f"{num / den:.2f}x" if num and den else "n/a"

    print("\n### Time relative to mmctx under the same allocator (> 1: mmctx is faster)\n")
    print("| malloc | N | HF Longformer / mmctx, fwd | Flex / mmctx, fwd | HF / mmctx, fwd+bwd |")
    print("|---|---:|---:|---:|---:|")
    for alloc in args.allocators:
        for n in args.sizes:
            cells = [
                ratio(alloc, "hf_longformer", n, "fwd"),
                ratio(alloc, "flex_compiled", n, "fwd"),
            ]
            cells.append(ratio(alloc, "hf_longformer", n, "fwd+bwd"))
            print(f"| {alloc} | {n} | " + " | ".join(cells) + " |")


def run_all(args, machine: dict) -> list[dict]:
    keys = ("batch", "heads", "head_dim", "window", "dtype", "repeats", "threads", "err_rows")
    common = {key: getattr(args, key) for key in keys}
    jobs, rows = plan(args), []
    for i, (alloc, impl, n, pass_, timeout) in enumerate(jobs, 1):
        row = {"allocator": alloc, "impl": impl, "n": n, "pass": pass_}
        reason = skip_reason(args, impl, n, pass_)
        if reason:
            row.update(status="skipped", note=reason)
        else:
            row["cpu_busy_before"] = others_busy()
            row.update(run_child({**row, **common, "timeout": timeout}))
        add_rates(row, args, machine["matmul_gflops"][args.dtype])
        rows.append(row)
        done = f"{row['status']} {fmt(row.get('time_s'), '.4g')} {row.get('note') or ''}"
        where = f"[{i}/{len(jobs)}] {alloc} {impl} N={n} {pass_}"
        print(f"{where}: {done[:160]}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.single:
        return child_main(args.single)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    machine = machine_info(args)
    print(f"matmul GFLOP/s: {machine['matmul_gflops']}", file=sys.stderr)
    rows = run_all(args, machine)
    print_report(rows, args, machine)
    config = {k: v for k, v in vars(args).items() if k not in ("single", "out")}
    result = {"config": config, "machine": machine, "rows": rows}
    result["wall_s"] = time.time() - started
    out = args.out or Path(__file__).parent / "results" / f"attention_{args.dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The attention benchmark compares implementations fairly: every one of them runs under the
same allocator settings, and the JSON records what each child process actually ran with."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "attention_bench.py"


@pytest.mark.slow
def test_every_implementation_runs_under_the_same_allocator_settings(tmp_path):
    out = tmp_path / "attention.json"
    args = ["--sizes", "512", "--window", "16", "--impls", "dense_sdpa_band", "mmctx"]
    args += ["--passes", "fwd", "--repeats", "1", "--no-million", "--matmul-seconds", "0.1"]
    env_noise = {"MALLOC_ARENA_MAX": "1", "PATH": "/usr/bin:/bin"}  # must not reach a child
    subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)],
        check=True,
        capture_output=True,
        env=env_noise,
        timeout=300,
    )
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["allocator"], r["impl"]) for r in rows) == [
        ("default", "dense_sdpa_band"),
        ("default", "mmctx"),
        ("tuned", "dense_sdpa_band"),
        ("tuned", "mmctx"),
    ]
    assert all(r["status"] == "ok" for r in rows), [r.get("note") for r in rows]
    states = {}
    for r in rows:
        state = r["allocator_state"]
        assert state["malloc_env"] == {}  # MALLOC_* variables of the caller were dropped
        states.setdefault(r["allocator"], set()).add(state["glibc_tunables"])
    # within a mode every implementation saw the same settings; the modes differ
    assert states == {
        "default": {""},
        "tuned": {"glibc.malloc.trim_threshold=2147483648:glibc.malloc.mmap_max=0"},
    }
    # and the settings took effect: with mmap off glibc holds no mmapped block, while the
    # default maps the output (8 heads x 512 x 64 floats = 1 MiB, over the mmap threshold)
    for r in rows:
        mapped = r["allocator_state"]["mmapped_bytes"]
        assert (mapped == 0) == (r["allocator"] == "tuned"), (r["allocator"], r["impl"], mapped)


def test_a_benchmark_process_reruns_itself_under_the_requested_malloc_settings(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "from allocator import allocator_state, run_under\n"
        "run_under(sys.argv[1])\n"
        "print(json.dumps(allocator_state()))\n"
    )
    env = {"MALLOC_ARENA_MAX": "1", "GLIBC_TUNABLES": "glibc.malloc.mmap_max=7"}
    states = {}
    for mode in ("tuned", "default"):
        done = subprocess.run(
            [sys.executable, str(script), mode], capture_output=True, text=True, env=env, check=True
        )
        states[mode] = json.loads(done.stdout)
    assert states["tuned"]["glibc_tunables"].endswith("glibc.malloc.mmap_max=0")
    assert states["default"]["glibc_tunables"] == ""  # the caller's own tunables are dropped
    assert states["tuned"]["malloc_env"] == states["default"]["malloc_env"] == {}


def test_the_kernel_profile_accounts_for_the_whole_call_and_its_ceiling_arithmetic(tmp_path):
    out = tmp_path / "profile.json"
    args = ["--sizes", "300", "--heads", "2", "--head-dim", "8", "--window", "40"]
    args += ["--blocks", "16", "32", "--repeats", "1", "--matmul-seconds", "0.05"]
    subprocess.run(
        [sys.executable, str(SCRIPT.with_name("attention_profile.py")), *args, "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert [(r["n"], r["pass"]) for r in result["breakdown"]] == [(300, "fwd"), (300, "fwd+bwd")]
    for row in result["breakdown"]:
        assert sum(row["shares"].values()) == pytest.approx(1.0, abs=1e-6)
        assert row["shares"]["block matmuls"] > 0 and row["shares"]["exp2"] > 0
    assert [r["kernel_uses"] for r in result["ceiling"]] == [False, True]  # c = 32 at w = 40
    for row in result["ceiling"]:
        # useful band work over the blocks' matmul work: N (2w + 1) / (ceil(N / c) c L)
        blocks = -(-300 // row["c"]) * row["c"]
        share = 300 * 81 / (blocks * row["L"])
        assert row["ceiling_fwd_pct"] == pytest.approx(row["block_matmul_pct"] * share)
        assert row["ceiling_fwd_bwd_pct"] == pytest.approx(row["ceiling_fwd_pct"] * 2.5 / 3.5)
        assert row["band_waste"] == pytest.approx(1 - 81 / row["L"])

"""The benchmark harness (python -m vaecuda.bench): byte counts, the value check that refuses a
benchmark of disagreeing providers, the result files. No timing is asserted."""

import csv
import json
import os
import sys

import pytest
import torch

from vaecuda.bench import __main__ as bench
from vaecuda.bench import harness, report, workloads
from vaecuda.bench.workloads import Case


def test_min_bytes():
    d = dict(B=2, D=3, P=5)
    lat, pix, row = 2 * 3 * 4, 2 * 5 * 4, 2 * 4
    assert workloads.min_bytes("kl", "fwd", d, 4) == 2 * lat + row
    assert workloads.min_bytes("kl", "fwd+bwd", d, 4) == 2 * lat + row + row + 4 * lat
    assert workloads.min_bytes("sample", "fwd+bwd", d, 4) == 3 * lat + 3 * lat  # d mu: the upstream gradient
    assert workloads.min_bytes("bernoulli", "fwd+bwd", d, 4) == 2 * pix + row + row + 3 * pix
    k = dict(d, K=7)  # K samples: z and logits K times, mu/logvar and the target once
    assert workloads.min_bytes("sample", "fwd+bwd", k, 4) == 9 * lat + 10 * lat  # d mu: sum over 7 samples
    assert workloads.min_bytes("sample", "fwd", k, 2) == 2 * (lat // 2) + 7 * (lat // 2)
    assert workloads.min_bytes("bernoulli", "fwd", k, 4) == 7 * pix + pix + 7 * row  # [K, B] log-likelihoods
    assert workloads.min_bytes("kl", "fwd", d, 8) == 2 * (2 * lat) + 2 * row  # float64: 8-byte losses
    assert workloads.min_bytes("head", "fwd", d, 4) == (workloads.min_bytes("sample+kl", "fwd", d, 4)
                                                       + workloads.min_bytes("bernoulli", "fwd", d, 4))
    assert workloads.min_bytes("train/mlp", "step", d, 4) is None
    # uint8 targets: one byte a pixel, read in each pass, instead of the logits' four
    assert workloads.min_bytes("bernoulli-u8", "fwd+bwd", d, 4) == 2 * pix + row + row + 3 * pix - 2 * (pix - pix // 4)
    assert workloads.min_bytes("bernoulli-u8", "fwd", k, 2) == 7 * (pix // 2) + pix // 4 + 7 * row


def _case(bad_output=False, bad_grad=False):
    x = torch.randn(4, 3, requires_grad=True)

    def broken(fixed):
        y = x * 2 + (1.0 if bad_output else 0.0)
        return (y + (x * x - x * x.detach() if bad_grad else 0.0),)
    return Case("toy", "tiny", "fwd+bwd", {"B": 4, "D": 3}, {"eager": lambda fixed: (x * 2,), "mine": broken},
                {"eager": [x], "mine": [x]}, (torch.ones(4, 3),))


def test_check_refuses_mismatch():
    harness.check_case(_case(), torch.float32)  # agreeing providers pass
    with pytest.raises(harness.ProviderMismatch, match="mine and eager disagree on output 0"):
        harness.check_case(_case(bad_output=True), torch.float32)
    with pytest.raises(harness.ProviderMismatch, match="disagree on gradient 0"):
        harness.check_case(_case(bad_grad=True), torch.float32)



def test_16_bit_tolerance_scales_with_the_tensor():
    """bf16/fp16: an element where eager's 8-bit intermediates cancel may be off by more than 3% of
    itself (0.072 on a gradient of several units, seen on an H200 between eager and torch.compile);
    within 3% of the tensor's largest magnitude it passes. A wrong value at the scale of the tensor, a
    wrong sign or a dropped element does not, nor does the same cancellation error in float32."""
    want = torch.linspace(-6.0, 6.0, 1001)
    want[500] = 0.03  # an element near zero
    near = want.clone()
    near[500] = 0.03 + 0.072
    for dtype in (torch.bfloat16, torch.float16):
        torch.testing.assert_close(near, want, **harness.tolerance(dtype, want))
        for bad in (want * 1.1, -want, torch.where(torch.arange(1001) == 900, 0.0, want)):
            with pytest.raises(AssertionError):
                torch.testing.assert_close(bad, want, **harness.tolerance(dtype, want))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(near, want, **harness.tolerance(torch.float32, want))
    assert harness.tolerance(torch.bfloat16, torch.full((3,), 0.5))["atol"] == pytest.approx(3e-2)  # scale >= 1

@pytest.fixture
def tiny_shapes(monkeypatch):
    for name, dims in TINY.items():
        monkeypatch.setitem(workloads.ALL_SHAPES, name, dims)


TINY = {"tiny": dict(B=5, D=3, P=7), "tiny-k": dict(B=5, D=3, P=7, K=4)}


@pytest.mark.parametrize("op,shape", [(op, s) for s in TINY for op in workloads.OPS + workloads.EXTRA_OPS
                                      if workloads.applicable(op, TINY[s])])
def test_every_provider_agrees(tiny_shapes, op, shape):
    """The workloads are right: eager, torch.compile and vaecuda give the same values and gradients."""
    case = workloads.op_case(op, shape, "fwd+bwd", torch.device("cpu"), torch.float32, cuda_extras=False)
    assert set(case.providers) == {"eager", "compile", "vaecuda"}
    harness.check_case(case, torch.float32)


def test_train_step_providers_agree():
    case = workloads.train_case("mlp", torch.device("cpu"), torch.float32)
    harness.check_case(case, torch.float32)
    measured = harness.time_case(case, torch.device("cpu"), rounds=1, target_s=1e-4)
    assert set(measured) == {"eager", "compile", "vaecuda"} and "compile_s" in measured["compile"]


def test_rows_and_table():
    case = Case("kl", "tiny", "fwd+bwd", {"B": 4, "D": 3}, {}, {}, (), min_bytes=1000)
    measured = {"eager": {"median_us": 30.0, "p20_us": 29.0, "p80_us": 31.0},
                "compile": {"median_us": 20.0, "p20_us": 19.0, "p80_us": 21.0},
                "vaecuda": {"median_us": 10.0, "p20_us": 9.0, "p80_us": 11.0}}
    rows = report.rows_of(case, measured, copy_gbps=0.5, dtype="float32")
    mine = next(r for r in rows if r["provider"] == "vaecuda")
    assert mine["speedup_vs_eager"] == 3.0 and mine["speedup_vs_compile"] == 2.0
    assert mine["GBps"] == pytest.approx(0.1) and mine["copy_fraction"] == pytest.approx(0.2)
    text = report.tables(rows)
    assert "3.00" in text and "2.00" in text


def test_plan_skips_what_a_shape_lacks():
    args = bench.parse(["--device", "cpu", "--shapes", "xlarge", "iwae", "--train"])
    todo = bench.plan(args)
    works = {(shape, name) for _, name, shape, _, _ in todo}
    assert ("xlarge", "bernoulli") not in works and ("xlarge", "kl") in works
    assert ("iwae", "head") not in works and ("iwae", "bernoulli") in works


def test_training_steps_only():
    args = bench.parse(["--device", "cpu", "--ops", "--train", "mlp", "--no-binding"])
    assert [name for _, name, *_ in bench.plan(args)] == ["mlp"]


def test_main_writes_results(tmp_path, capsys):
    rc = bench.main(["--device", "cpu", "--shapes", "small", "--ops", "kl", "--modes", "fwd", "--train",
                     "--rounds", "1", "--target-ms", "1", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "bench_cpu_quick.json").read_text())
    assert {"date", "machine", "torch", "vaecuda", "git", "copy_GBps"} <= set(data["meta"])
    providers = {r["provider"] for r in data["rows"]}
    assert {"eager", "compile", "vaecuda", "x * 2", "vaecuda _scale", "custom_op _scale", "rng_state draw"} == providers
    with open(tmp_path / "bench_cpu_quick.csv") as f:
        body = [line for line in f if not line.startswith("#")]
    assert len(list(csv.DictReader(body))) == len(data["rows"])
    png = tmp_path / "bench_cpu_quick.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert "×eager" in capsys.readouterr().out


def test_main_refuses_wrong_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(workloads, "eager_kl", lambda mu, lv: 1.001 * (0.5 * (lv.exp() + mu * mu - 1 - lv)).sum(-1))
    rc = bench.main(["--device", "cpu", "--shapes", "small", "--ops", "kl", "--modes", "fwd", "--train",
                     "--no-binding", "--rounds", "1", "--target-ms", "1", "--out", str(tmp_path)])
    assert rc == 1
    assert "refusing to benchmark small/kl/fwd" in capsys.readouterr().err


def test_ops_related_to_the_trivial_op_timed_beside_them():
    """Each small fwd+bwd op over the trivial op timed in its own rounds (on the latents); the
    pixel-wise ops also over the trivial op on as many elements as the logits."""
    case = Case("bernoulli", "small", "fwd+bwd", {"B": 4, "P": 8}, {}, {}, (), min_bytes=1000)
    measured = {"eager": {"median_us": 500.0}, "vaecuda": {"median_us": 240.0},
                workloads.TRIVIAL_LATENTS: {"median_us": 100.0}, workloads.TRIVIAL_PIXELS: {"median_us": 160.0}}
    rows = report.rows_of(case, measured, copy_gbps=1.0, dtype="float32")
    by = {r["provider"]: r for r in rows}
    assert by["vaecuda"]["over_trivial_op"] == 2.4 and by["vaecuda"]["over_same_size_op"] == 1.5
    assert "over_trivial_op" not in by["eager"] and "GBps" not in by[workloads.TRIVIAL_LATENTS]
    text = report.tables(rows)
    assert "bernoulli 2.40×" in text and "bernoulli 1.50×" in text
    assert workloads.TRIVIAL_LATENTS not in text.splitlines()[0]  # floors are not provider columns
    # a two-output op (sample+KL): also over the trivial op passed as two roots
    case = Case("sample+kl", "small", "fwd+bwd", {"B": 4, "D": 8}, {}, {}, (), min_bytes=1000)
    measured = {"vaecuda": {"median_us": 180.0}, workloads.TRIVIAL_LATENTS: {"median_us": 100.0},
                workloads.TRIVIAL_TWO_ROOTS: {"median_us": 150.0}}
    rows = report.rows_of(case, measured, copy_gbps=1.0, dtype="float32")
    mine = next(r for r in rows if r["provider"] == "vaecuda")
    assert mine["over_trivial_op"] == 1.8 and mine["over_two_root_op"] == 1.2
    assert "passed as two roots" in report.tables(rows) and "sample+kl 1.20×" in report.tables(rows)


def test_small_cases_time_the_trivial_op_beside_the_providers():
    kl = workloads.op_case("kl", "small", "fwd+bwd", torch.device("cpu"), torch.float32, False)
    bern = workloads.op_case("bernoulli", "small", "fwd+bwd", torch.device("cpu"), torch.float32, False)
    medium = workloads.op_case("kl", "medium", "fwd+bwd", torch.device("cpu"), torch.float32, False)
    two = workloads.op_case("sample+kl", "small", "fwd+bwd", torch.device("cpu"), torch.float32, False)
    assert set(kl.steps) == {workloads.TRIVIAL_LATENTS}
    assert set(bern.steps) == {workloads.TRIVIAL_LATENTS, workloads.TRIVIAL_PIXELS}
    assert set(two.steps) == {workloads.TRIVIAL_LATENTS, workloads.TRIVIAL_TWO_ROOTS}  # two outputs
    assert not medium.steps
    for step in list(bern.steps.values()) + list(two.steps.values()):
        step()  # runs: a fwd+bwd of the trivial op
    a_grad = two.steps[workloads.TRIVIAL_TWO_ROOTS]()  # d(2a)/da with ga from each root: 2 * 2 ga
    a, ga = workloads._trivial_operands((128, 32), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(a_grad[0], 4 * ga)


def test_plan_has_both_binding_floors():
    args = bench.parse(["--device", "cpu", "--ops", "kl", "--shapes", "small", "--train"])
    cases = [bench.build(*entry, torch.device("cpu")) for entry in bench.plan(args) if entry[0] == "binding"]
    assert [c.work for c in cases] == ["binding path", "binding path (pixels)"]
    assert cases[0].wrt["vaecuda _scale"][0].shape == (128, 32)
    assert cases[1].wrt["vaecuda _scale"][0].shape == (128, 784)


def _load_script(name):
    """A script of benchmarks/ (not a package) as a module."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kernel_times_script_runs_every_kernel(capsys, monkeypatch):
    """benchmarks/kernel_times.py (gpu_check.sh's kernels stage) calls each op's forward and backward
    directly: a smoke run on the CPU keeps its calls in step with the op schemas."""
    mod = _load_script("kernel_times")
    monkeypatch.setattr(sys, "argv", ["kernel_times.py", "--device", "cpu", "--shapes", "8x12", "--dtypes", "float32",
                                      "bfloat16", "--reps", "1", "--rounds", "1"])
    mod.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    names = ["sample fwd", "sample bwd", "sample+kl fwd", "sample+kl bwd", "kl fwd", "kl bwd",
             "bern fwd", "bern fwd+grad", "bern bwd", "copy"]
    assert [" ".join(r[2:-3]) for r in rows] == names * 2
    assert all(float(r[-3]) > 0 for r in rows) and [r[-1] for r in rows if r[2] == "copy"] == ["100%"] * 2


def test_paired_ratio_compares_round_by_round():
    # a machine twice as slow in the second round slows both steps of it: the per-round ratio is 1.5
    # both times, where the ratio of the medians would mix the rounds (1.5 * 1.0, 3.0 / 1.0 ...)
    assert harness.paired_ratio([150.0, 300.0, 150.0], [100.0, 200.0, 100.0]) == 1.5
    assert harness.paired_ratio([300.0, 150.0], [100.0, 200.0]) == (3.0 + 0.75) / 2


def test_floors_run_right_after_vaecuda_and_give_paired_ratios():
    kl = workloads.op_case("kl", "small", "fwd+bwd", torch.device("cpu"), torch.float32, False)
    order = harness.round_order(kl)
    assert order[order.index("vaecuda") + 1] == workloads.TRIVIAL_LATENTS and len(order) == len(set(order))
    measured = harness.time_case(kl, torch.device("cpu"), rounds=3, target_s=1e-3)
    assert measured["vaecuda"]["over_trivial_op"] > 0 and "over_trivial_op" not in measured["eager"]
    rows = report.rows_of(kl, measured, copy_gbps=1.0, dtype="float32")
    mine = next(r for r in rows if r["provider"] == "vaecuda")
    assert mine["over_trivial_op"] == round(measured["vaecuda"]["over_trivial_op"], 3)
    assert "launches" not in mine  # a timed run attaches no profiler (harness.count_launches)


def test_launch_rows_and_table():
    case = Case("kl", "small", "fwd+bwd", {"B": 4, "D": 8}, {}, {}, (), min_bytes=1000)
    measured = {"eager": {"launches": 14}, "vaecuda": {"launches": 2}, workloads.TRIVIAL_LATENTS: {"launches": 2}}
    rows = report.rows_of(case, measured, copy_gbps=1.0, dtype="float32")
    assert all("GBps" not in r and "speedup_vs_eager" not in r and "over_trivial_op" not in r for r in rows)
    text = report.tables(rows)
    assert "kernels launched by one step" in text and text.splitlines()[2].split()[-3:] == ["14", "2", "2"]


def test_launch_counting_needs_cuda():
    with pytest.raises(SystemExit):
        bench.parse(["--device", "cpu", "--launches"])


def test_main_times_the_trivial_op_at_the_start_and_the_end(tmp_path, capsys):
    rc = bench.main(["--device", "cpu", "--shapes", "small", "--ops", "kl", "--modes", "fwd", "--train",
                     "--no-binding", "--rounds", "1", "--target-ms", "1", "--out", str(tmp_path)])
    assert rc == 0
    meta = json.loads((tmp_path / "bench_cpu_quick.json").read_text())["meta"]
    assert meta["trivial_us_start"] > 0 and meta["trivial_us_end"] > 0
    assert "timed alone at the start and at the end of the run" in capsys.readouterr().out


# A made-up cuobjdump listing in the shape of a row kernel's quad loop: a setup loop (a division's
# MUFU.RCP, no load), then the quad loop: a ready check before a vector load, a slow-path CALL
# jumped over, an output's stores (skippable; a branch nested in it), the KL row-sum terms
# (skippable), a vector store
# followed by a branch over its scalar stores, the back branch.
_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   MUFU.RCP R2, R3 ;
        /*0020*/               @P0 BRA 0x10 ;
        /*0030*/                   IADD3 R4, R4, 0x1, RZ ;
        /*0040*/              @!P1 BRA 0x70 ;
        /*0050*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0060*/                   BRA 0x80 ;
        /*0070*/                   LDG.E R8, desc[UR4][R6.64] ;
        /*0080*/                   MUFU.EX2 R9, R9 ;
        /*0090*/              @!P2 BRA 0xc0 ;
        /*00a0*/                   MOV R12, 0xc0 ;
        /*00b0*/                   CALL.REL.NOINC 0x400 ;
        /*00c0*/              @!P3 BRA 0xf0 ;
        /*00d0*/              @!P7 BRA 0xf0 ;
        /*00e0*/                   STG.E.128 desc[UR4][R14.64], R8 ;
        /*00f0*/              @!P4 BRA 0x140 ;
        /*0100*/                   FMUL R20, R20, R20 ;
        /*0110*/                   FMUL R21, R21, R21 ;
        /*0120*/                   FMUL R22, R22, R22 ;
        /*0130*/                   FMUL R23, R23, R23 ;
        /*0140*/               @P5 STG.E.128 desc[UR4][R18.64], R8 ;
        /*0150*/               @P5 BRA 0x180 ;
        /*0160*/                   STG.E desc[UR4][R18.64], R8 ;
        /*0170*/                   STG.E desc[UR4][R18.64+0x4], R9 ;
        /*0180*/              @!P6 BRA 0x30 ;
        /*0190*/                   EXIT ;
"""


def test_sass_count_walks_the_common_path_of_the_quad_loop():
    """benchmarks/sass_count.py, behind csrc/cuda/README.md's instructions-per-element figures: on a
    listing made up for it, it picks the quad loop (not the setup loop), falls through to the vector load,
    jumps over the slow path's CALL and over the scalar stores after a vector store, and skips an
    output's stores or the KL terms only when asked."""
    sc = _load_script("sass_count")
    ins = sc.parse(_SASS)
    assert sc.inner_loop(ins) == (0x30, 0x180)
    everything, hist = sc.count_path(ins, 0x30, 0x180)
    # 30 40 50 60 | 80 90 | c0 d0 e0 | f0 100 110 120 130 | 140 150 | 180
    assert everything == 17 and hist["STG"] == 2 and hist["LDG"] == 1 and "CALL" not in hist
    assert sc.skip_branches(ins, 0x30, 0x180, "store") == [0xc0]  # the outer block's only, not 0xd0
    assert sc.skip_branches(ins, 0x30, 0x180, "rowsum") == [0xf0]
    line = sc.count_kernel(ins, "k", quads=1, skip_first_output=True, no_rowsum=True)
    assert line.startswith("k: loop 0x30-0x180, 11 instructions for 1 quads: 2.8 per element")
    with pytest.raises(ValueError):
        sc.count_path(ins, 0x30, 0x1a0)  # an end the path never reaches

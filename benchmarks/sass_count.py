"""Instructions per element of a CUDA kernel's inner loop, counted along one path of its SASS: the
static count behind csrc/cuda/README.md's instructions-per-element figures for the sampling kernels
(bound by instruction issue on an H200, so the count tracks their time). It runs ~5% under what Nsight
Compute measures (row setup, loop tails): on the third GPU run's code it gives 94.2 / 98.2 for the
sampling forward / backward where ncu counted 99 / 103.

    python3 benchmarks/sass_count.py csrc/cuda/reparameterize.cu 'reparam_rows_kernel<float, true>' --no-rowsum
    python3 benchmarks/sass_count.py csrc/cuda/reparameterize.cu \
        'reparam_backward_rows<float, false, true>' --skip-first-output   # d mu passed through

It compiles the file with nvcc for sm_90 (-O3, as setup.py), dumps the kernel's SASS with cuobjdump
(from the CUDA toolkit, or the copy in triton's wheel), takes the innermost loop that holds a
load and an exponential (MUFU.EX2: the quad loop), and walks it once from its top to
its back branch: conditional branches fall through (vector loads, every output stored, the next
quad's loads issued), except the short ones that jump over a CALL (the slow paths of the correctly
rounded division and square root, taken only for extreme operands), those right after a vector
store under the same predicate (over the scalar stores of the same quad), those the options name
(an output's stores, the KL terms) and those listed with --taken.
Predicated-off instructions count (they are issued). The loop's quads (2: the row kernels' loop is
unrolled by two) divide the count."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRA = re.compile(r"^(@!?U?P\w+\s+)?BRA\s+(?:!?U?P\w+,\s*)?(0x[0-9a-f]+)")


def parse(sass: str) -> dict[int, str]:
    """Address -> instruction text (predicate included) of one function's cuobjdump listing."""
    return {int(a, 16): t.strip() for a, t in _INS.findall(sass)}


def loops(ins: dict[int, str]) -> list[tuple[int, int]]:
    """(top, back branch) of every loop: a branch to a lower address."""
    out = []
    for pc, t in ins.items():
        m = _BRA.match(t)
        if m and int(m.group(2), 16) < pc:
            out.append((int(m.group(2), 16), pc))
    return out


def inner_loop(ins: dict[int, str]) -> tuple[int, int]:
    """The shortest loop whose body loads from global memory and takes an exponential (MUFU.EX2):
    the quad loop (not the row setup's 64-bit divisions, whose loops hold a MUFU.RCP)."""
    def holds(s, e, what):
        return any(s <= a <= e and what in t for a, t in ins.items())
    found = [(s, e) for s, e in loops(ins) if holds(s, e, "MUFU.EX2") and holds(s, e, "LDG")]
    if not found:
        raise ValueError("no loop loads and takes an exponential")
    return min(found, key=lambda l: l[1] - l[0])


_VSTORE = re.compile(r"STG\.E\.(64|128)\b")


def count_path(ins: dict[int, str], start: int, end: int, taken=()) -> tuple[int, dict[str, int]]:
    """Instructions issued from start to end inclusive, following unconditional branches, taking the
    conditional ones at the addresses in `taken`, the short forward ones over a CALL (slow paths) and
    those that follow a vector store under the same predicate (skipping the same quad's scalar
    stores), and falling through the rest. Returns the count and a histogram by opcode."""
    addrs = sorted(ins)
    nxt_of = {a: b for a, b in zip(addrs, addrs[1:])}
    prev_of = {b: a for a, b in zip(addrs, addrs[1:])}
    pc, n, hist, seen = start, 0, {}, set()
    while True:
        if pc in seen:
            raise ValueError(f"the path loops at {pc:#x} before reaching {end:#x}")
        seen.add(pc)
        text = ins[pc]
        n += 1
        op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
        hist[op] = hist.get(op, 0) + 1
        if pc == end:
            return n, hist
        if pc not in nxt_of or text.startswith("EXIT"):
            raise ValueError(f"the path leaves the listing at {pc:#x} before reaching {end:#x}")
        nxt = nxt_of[pc]
        m = _BRA.match(text)
        if m:
            target = int(m.group(2), 16)
            over_call = pc < target <= pc + 0x80 and any(
                pc < a < target and ins[a].startswith("CALL") for a in addrs)
            after_vector_store, back = False, pc
            for _ in range(3):
                back = prev_of.get(back)
                if back is not None and m.group(1) and ins[back].startswith(m.group(1)) and _VSTORE.search(ins[back]):
                    after_vector_store = True
            if m.group(1) is None or pc in taken or over_call or after_vector_store:
                nxt = target
        pc = nxt


def skip_branches(ins: dict[int, str], start: int, end: int, kind: str) -> list[int]:
    """The conditional forward branches in [start, end] over a block that a kernel runs only when an
    output is wanted, in address order: kind "store", an output's stores (its vector store among
    them, and not nested in another such block: not a ready check inside the output's block); kind
    "rowsum", arithmetic alone (>= 4 FMUL, no memory access or exponential: the KL terms that
    sample+KL adds to its row sum)."""
    out = []
    for pc in sorted(a for a in ins if start <= a <= end):
        m = _BRA.match(ins[pc])
        if not (m and m.group(1) and int(m.group(2), 16) > pc):
            continue
        body = [t for a, t in ins.items() if pc < a < int(m.group(2), 16)]
        if any("MUFU" in t or "LDG" in t for t in body):
            continue
        inside = any(b < pc < int(_BRA.match(ins[b]).group(2), 16) for b in out)
        if kind == "store" and any(_VSTORE.search(t) for t in body) and not inside:
            out.append(pc)  # the outermost: not the ready check inside an output's block
        if kind == "rowsum" and not any("STG" in t for t in body) and sum(t.startswith("FMUL") for t in body) >= 4:
            out.append(pc)
    return out


def _cuobjdump() -> str:
    for cand in (shutil.which("cuobjdump"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")):
        if cand and os.path.exists(cand):
            return cand
    try:
        import triton  # its NVIDIA backend ships a cuobjdump
        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(cand):
            return cand
    except ImportError:
        pass
    raise SystemExit("cuobjdump not found (CUDA toolkit bin/, or pip's triton)")


def kernel_sass(cu: str, kernel: str, arch: str = "90") -> str:
    """The SASS of the one instantiation whose demangled name, template arguments included, is
    `kernel` (with or without its namespaces)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "csrc")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        subprocess.run(["nvcc", "-std=c++17", "-O3", f"-I{root}", f"-gencode=arch=compute_{arch},code=sm_{arch}",
                        "-cubin", cu, "-o", cubin], check=True)
        dump = subprocess.run([_cuobjdump(), "-sass", cubin], check=True, capture_output=True, text=True).stdout
    parts = re.split(r"\n\s*Function : (\S+)\n", dump)
    want = kernel.replace(" ", "")
    hits = []
    for name, body in zip(parts[1::2], parts[2::2]):
        plain = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip().replace(" ", "")
        plain = re.sub(r"^void", "", plain).split("(")[0]
        if plain == want or plain.endswith("::" + want):
            hits.append(body)
    if len(hits) != 1:
        raise SystemExit(f"{len(hits)} kernels match {kernel!r}")
    return hits[0]


def count_kernel(ins, label, quads=2, taken=(), skip_first_output=False, no_rowsum=False) -> str:
    """The report line for one kernel's listing (see the module's docstring)."""
    start, end = inner_loop(ins)
    taken = set(taken)
    if skip_first_output:
        skips = skip_branches(ins, start, end, "store")
        if not skips or len(skips) % quads:
            raise ValueError(f"{len(skips)} output store blocks in {quads} copies of the loop body")
        per_copy = len(skips) // quads
        taken.update(skips[c * per_copy] for c in range(quads))
    if no_rowsum:
        taken.update(skip_branches(ins, start, end, "rowsum"))
    n, hist = count_path(ins, start, end, taken)
    top = ", ".join(f"{k} {v}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1])[:12])
    return (f"{label}: loop {start:#x}-{end:#x}, {n} instructions for {quads} quads: "
            f"{n / (4 * quads):.1f} per element ({top})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cu")
    p.add_argument("kernel", help="demangled name with its template arguments, e.g. 'reparam_rows_kernel<float, true>'")
    p.add_argument("--arch", default="90")
    p.add_argument("--quads", type=int, default=2, help="quads per loop iteration (the unrolled row loop: 2)")
    p.add_argument("--taken", default="", help="comma-separated hex addresses of branches to take")
    p.add_argument("--skip-first-output", action="store_true",
                   help="skip the first output's stores in each unrolled copy (the sampling backward's "
                        "d mu, passed through when no KL gradient comes back)")
    p.add_argument("--no-rowsum", action="store_true", help="skip the KL row-sum terms (sampling without KL)")
    a = p.parse_args(argv)
    print(count_kernel(parse(kernel_sass(a.cu, a.kernel, a.arch)), a.kernel, a.quads,
                       {int(x, 16) for x in a.taken.split(",") if x}, a.skip_first_output, a.no_rowsum))
    return 0

if __name__ == "__main__":
    sys.exit(main())

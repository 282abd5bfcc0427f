"""The benchmark suite: ``python -m vaecuda.bench`` (see ``python -m vaecuda.bench --help``).

workloads  named shapes, the work (ops, loss head, training steps) and the providers doing it
harness    value checks before timing, interleaved timing, device time, memory, copy bandwidth
report     ratios, the terminal table, JSON / CSV / PNG
"""

"""Where the cold start goes: per compiled function, the seconds Numba spends compiling
it (exclusive of the functions it calls, and inclusive), the size of its final LLVM
module (its own code plus every callee linked into it), and the time spent in LLVM.

Run it with an empty Numba cache, or there is nothing to see:

    NUMBA_CACHE_DIR=$(mktemp -d) python -m benchmarks.prototypes.compile_profile [fastbp train args]

The default workload is ``fastbp train --epochs 1 --no-reference`` (the cold start that
``fastbp bench`` reports). With a warm cache the table is empty (nothing compiles).
"""

import contextlib
import io
import sys
import time

from numba.core import event

#: the command line's default workload
DEFAULT_ARGS = ["train", "--epochs", "1", "--no-reference"]


class CompileTimes(event.Listener):
    """Records (exclusive s, inclusive s, dispatcher, signature) per compile event."""

    def __init__(self):
        self.stack, self.records = [], []

    def on_start(self, ev):
        self.stack.append([time.perf_counter(), 0.0])

    def on_end(self, ev):
        start, children = self.stack.pop()
        elapsed = time.perf_counter() - start
        if self.stack:
            self.stack[-1][1] += elapsed
        self.records.append((elapsed - children, elapsed, ev.data["dispatcher"], ev.data["args"]))


class Timer(event.Listener):
    """Total seconds inside one kind of event (e.g. numba:llvm_lock)."""

    def __init__(self):
        self.seconds, self.started = 0.0, []

    def on_start(self, ev):
        self.started.append(time.perf_counter())

    def on_end(self, ev):
        self.seconds += time.perf_counter() - self.started.pop()


def module_size(dispatcher, signature):
    """Characters of the final LLVM IR of one specialisation (callees linked in)."""
    cres = dispatcher.overloads.get(tuple(signature))
    return len(cres.library.get_llvm_str()) if cres is not None else 0


def main(argv=None):
    args = list(argv if argv is not None else sys.argv[1:]) or DEFAULT_ARGS
    compiles, llvm = CompileTimes(), Timer()
    event.register("numba:compile", compiles)
    event.register("numba:llvm_lock", llvm)
    t0 = time.perf_counter()
    from fastbp.cli import main as cli_main
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main(args)
    total = time.perf_counter() - t0
    print(f"fastbp {' '.join(args)}: {total:.2f} s in-process (imports of fastbp included), "
          f"{len(compiles.records)} compiled specialisations, {llvm.seconds:.2f} s in LLVM")
    print(f"{'exclusive s':>11} {'inclusive s':>11} {'LLVM IR kchars':>14}  function")
    ir_total = 0
    for exclusive, inclusive, dispatcher, signature in sorted(compiles.records, key=lambda r: -r[0]):
        size = module_size(dispatcher, signature)
        ir_total += size
        name = f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}"
        print(f"{exclusive:11.2f} {inclusive:11.2f} {size / 1e3:14.0f}  {name}")
    print(f"sum of the final modules' LLVM IR: {ir_total / 1e3:.0f} kchars (each module holds its callees)")
    return compiles.records


if __name__ == "__main__":
    main()

"""Two threads in step inside one compiled call each: atomics and a spin barrier.

Numba's ``prange`` forks and joins its threads once per loop, about 1.6 µs here, and a
loop per training step would also move the whole gradient between the cores
(``benchmarks/README.md``, section 11). ``kernels.cpu_split`` therefore runs one call per
thread that each train a chunk of batches (the calling thread and fastbp's own second
thread, ``cpu_training.SecondThread``), and keeps them in step with :func:`barrier`: a
sense-reversing barrier on an int64 array ``state`` = [arrived, generation, handshake]
that both threads share. The barrier waits with the CPU's ``pause`` and, every
:data:`SPINS_BEFORE_YIELD` of them, ``sched_yield`` (a partner thread that lost its core
gets it back sooner than if the waiting one burnt its time slice).

:func:`handshake` comes first in a call: the two must run at the same time, or a barrier
would wait forever. It waits for the other at most :data:`HANDSHAKE_SPINS` spins; if it
does not come, both return False at once (the caller then trains the chunk on one
thread). :func:`await_arrival` lets the caller wait for the other
thread's arrival before its own call.

Linux may place the two threads on one core: waking an idle thread, a scheduler that
packs threads onto few vCPUs (this machine's kernel has a ``sched_vcpu_pack`` setting)
puts it on the waker's core, and two threads that spin and yield there stay runnable on
that one core while the other idles, for 5-40 ms (``perf sched timehist``: they
alternated every ~0.1 ms on one vCPU; an epoch of 64-128-10 took 18-20 ms instead of 10).
:func:`keep_apart` checks, once per call and whenever the second thread starts waiting
for a call, and if so moves the second thread off the first one's core (its CPU
affinity): a few µs, and only when the two did share a core. The second thread keeps
that mask while it sleeps between fits, so that a wake puts it on another core than the
waker's: woken onto the caller's core, it waited there until the caller's Python let go
of it, ~0.1 ms of every fit (``benchmarks/README.md``, section 14). A mask changed from
outside meanwhile becomes the thread's own. :func:`let_go` puts a thread's own mask back.

The intrinsics emit LLVM's atomic instructions and intrinsics directly, and the C
library's ``sched_yield``, ``sched_getcpu``, ``sched_{get,set}affinity`` and ``syscall``
(Linux's ``futex``, on which the second thread sleeps between fits without returning to
Python) are resolved when the code is loaded, so functions that use them are cached like
any other.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import compiled_only

#: ``pause`` instructions a waiting thread spins before each ``sched_yield``
SPINS_BEFORE_YIELD = 2000
#: the same in :func:`await_arrival`, a wait of the other thread's Python (~0.05 ms), which
#: may be waiting for this very CPU
SPINS_BEFORE_QUICK_YIELD = 32
#: spins (each ``pause``, then a yield every :data:`SPINS_BEFORE_YIELD`) the handshake
#: waits for the second thread: well over a second of an idle core, far longer than a
#: thread start, so only a region that runs its iterations one after the other times out
HANDSHAKE_SPINS = 20_000_000

#: ``state``: the barrier's count and generation, the handshake, the first thread's CPU
#: (written before the handshake) and whether :func:`keep_apart` moved the second thread
ARRIVED, GENERATION, HANDSHAKE, FIRST_CPU, MOVED = 0, 1, 2, 3, 4
STATE_LENGTH = 5
#: bytes of a CPU mask (``cpu_set_t`` for up to 8192 CPUs): ``masks`` is (MASK_ROWS,
#: AFFINITY_BYTES) uint8, the second thread's own mask, the one it runs under while moved,
#: and scratch for the mask it finds
AFFINITY_BYTES = 1024
MASK_ROWS = 3
#: added to ``state[HANDSHAKE]`` by a thread that stopped waiting for the other
GAVE_UP = 1 << 20


def _pointer(context, builder, array_type, array, index):
    array = context.make_array(array_type)(context, builder, array)
    index = context.cast(builder, index[0], index[1], types.intp)
    return cgutils.get_item_pointer(context, builder, array_type, array, [index])


@intrinsic
def atomic_add(typingctx, array, index, value):
    """array[index] += value atomically (sequentially consistent) on an int64 array; returns the old value."""
    def codegen(context, builder, signature, args):
        address = _pointer(context, builder, signature.args[0], args[0], (args[1], signature.args[1]))
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", address, value, "seq_cst")
    return types.int64(array, index, value), codegen


@intrinsic
def atomic_load(typingctx, array, index):
    """array[index] of an int64 array, read atomically (acquire)."""
    def codegen(context, builder, signature, args):
        address = _pointer(context, builder, signature.args[0], args[0], (args[1], signature.args[1]))
        return builder.load_atomic(address, "acquire", 8)
    return types.int64(array, index), codegen


@compiled_only(inline="always")
def atomic_read(array, index):
    """array[index] of an int64 array as a sequentially consistent read-modify-write (adds
    0): ordered with this thread's earlier atomic writes, where an acquire load is not
    (the store-buffering case of a sleeper and its waker)."""
    return atomic_add(array, index, 0)


@intrinsic
def spin_pause(typingctx):
    """The CPU's spin-wait hint (x86 ``pause``)."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                  "llvm.x86.sse2.pause")
        builder.call(function, [])
        return context.get_dummy_value()
    return types.void(), codegen


def _libc_call(name, returns, arguments):
    """An emitter of a call to the C library's function ``name`` (resolved when the code loads)."""
    def call(builder, values):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(returns, arguments), name)
        return builder.call(function, values)
    return call


@intrinsic
def sched_yield(typingctx):
    """POSIX ``sched_yield()``: give the core to another runnable thread."""
    def codegen(context, builder, signature, args):
        _libc_call("sched_yield", ir.IntType(32), [])(builder, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def current_cpu(typingctx):
    """Linux ``sched_getcpu()``: the CPU the calling thread runs on (-1 if unknown)."""
    def codegen(context, builder, signature, args):
        cpu = _libc_call("sched_getcpu", ir.IntType(32), [])(builder, [])
        return builder.sext(cpu, ir.IntType(64))
    return types.int64(), codegen


def _affinity_intrinsic(name, doc):
    def template(typingctx, mask):
        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            pointer = builder.bitcast(array.data, ir.IntType(8).as_pointer())
            size = builder.mul(array.nitems, array.itemsize)
            status = _libc_call(name, ir.IntType(32), [ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()])(
                builder, [ir.Constant(ir.IntType(32), 0), size, pointer])
            return builder.sext(status, ir.IntType(64))
        return types.int64(mask), codegen
    template.__name__, template.__doc__ = name, doc
    return intrinsic(template)


#: Linux x86-64: the number of the futex(2) system call, and its two operations used here
#: (private to this process: the word is not shared with another process)
SYS_FUTEX, FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 202, 128, 129
#: how long :func:`futex` with ``FUTEX_WAIT_PRIVATE`` sleeps at most (ns): a sleeping thread
#: looks at its condition again this often (the wakes are not lost; this only bounds one
#: that went astray, at one wake-up a second of an idle process)
FUTEX_SLEEP_NS = 1_000_000_000


@intrinsic
def futex(typingctx, array, index, op, value):
    """Linux ``futex(2)`` on the low 32 bits of ``array[index]`` (an int64 array; x86-64
    is little-endian, so those bits change whenever the value changes by less than 2³²):
    ``FUTEX_WAIT_PRIVATE`` sleeps while the word equals the low 32 bits of ``value``, at most
    :data:`FUTEX_SLEEP_NS`; ``FUTEX_WAKE_PRIVATE`` wakes up to ``value`` sleepers. Returns
    the system call's result (-1 on error: the word had changed, a signal, the timeout)."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        address = _pointer(context, builder, signature.args[0], args[0], (args[1], signature.args[1]))
        operation = context.cast(builder, args[2], signature.args[2], types.int64)
        word = builder.and_(context.cast(builder, args[3], signature.args[3], types.int64),
                            ir.Constant(i64, 0xFFFFFFFF))
        timeout = cgutils.alloca_once(builder, ir.ArrayType(i64, 2))  # struct timespec {seconds, nanoseconds}
        builder.store(ir.Constant(ir.ArrayType(i64, 2), list(divmod(FUTEX_SLEEP_NS, 10 ** 9))), timeout)
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64], var_arg=True),
                                                  "syscall")
        return builder.call(function, [ir.Constant(i64, SYS_FUTEX), builder.ptrtoint(address, i64), operation,
                                       word, builder.ptrtoint(timeout, i64)])
    return types.int64(array, index, op, value), codegen


get_affinity = _affinity_intrinsic("sched_getaffinity", "This thread's CPU mask into a uint8 array; 0 on success.")
set_affinity = _affinity_intrinsic("sched_setaffinity", "This thread's CPU mask from a uint8 array; 0 on success.")


@compiled_only(inline="always")
def note_cpu(state, t):
    """Before the handshake: the first thread writes down its CPU for :func:`keep_apart`."""
    if t == 0:
        state[FIRST_CPU] = current_cpu()


@compiled_only(inline="always")
def keep_apart(state, masks, t):
    """If the second thread (t = 1) runs on the CPU of the first (``state[FIRST_CPU]``, from
    :func:`note_cpu`), take that CPU out of its affinity mask (the kernel moves it at once);
    a thread allowed nowhere else stays. ``masks[0]`` keeps its own mask while it is moved
    (``state[MOVED]``): a later move starts again from it, and :func:`let_go` puts it back;
    unless the mask it finds is no longer the one it set (``masks[1]``): changed from
    outside (``taskset -a``, a cpuset), that mask is its own from then on."""
    if t != 1:
        return
    cpu = current_cpu()
    if cpu < 0 or cpu != state[FIRST_CPU] or cpu // 8 >= masks.shape[1]:
        return
    own, moved, found = masks[0], masks[1], masks[2]
    if state[MOVED] == 0:
        if get_affinity(own) != 0:
            return
    else:
        if get_affinity(found) != 0:
            return
        changed = False
        for i in range(found.shape[0]):
            changed = changed or found[i] != moved[i]
        if changed:
            for i in range(found.shape[0]):
                own[i] = found[i]
    elsewhere = False
    for i in range(own.shape[0]):
        moved[i] = own[i]
        if i == cpu // 8:
            moved[i] &= ~np.uint8(1 << (cpu % 8))
        elsewhere = elsewhere or moved[i] != 0
    if elsewhere and set_affinity(moved) == 0:
        state[MOVED] = 1


@compiled_only(inline="always")
def let_go(state, masks, t):
    """The second thread's own CPU mask back, if :func:`keep_apart` moved it."""
    if t == 1 and state[MOVED] == 1:
        set_affinity(masks[0])
        state[MOVED] = 0


@compiled_only(inline="always")
def wait(spins):
    """One spin of a wait loop: ``pause``, and every :data:`SPINS_BEFORE_YIELD` a yield."""
    spin_pause()
    if spins % SPINS_BEFORE_YIELD == SPINS_BEFORE_YIELD - 1:
        sched_yield()


@compiled_only(inline="always")
def barrier(state):
    """Wait until both threads have arrived (sense-reversing: reusable at once)."""
    generation = atomic_load(state, GENERATION)
    if atomic_add(state, ARRIVED, 1) == 1:  # the second to arrive releases the first
        atomic_add(state, ARRIVED, -2)
        atomic_add(state, GENERATION, 1)
    else:
        spins = 0
        while atomic_load(state, GENERATION) == generation:
            wait(spins)
            spins += 1


@compiled_only(inline="always")
def await_arrival(state):
    """Wait until the other thread has arrived at the :func:`handshake` (or gave up), at
    most :data:`HANDSHAKE_SPINS` spins, yielding every :data:`SPINS_BEFORE_QUICK_YIELD`."""
    spins = 0
    while atomic_load(state, HANDSHAKE) == 0 and spins < HANDSHAKE_SPINS:
        spin_pause()
        if spins % SPINS_BEFORE_QUICK_YIELD == SPINS_BEFORE_QUICK_YIELD - 1:
            sched_yield()
        spins += 1


@compiled_only(inline="always")
def handshake(state):
    """True when both iterations of the region run at the same time. The first to arrive
    waits for the second; if it gives up first, ``state[HANDSHAKE]`` jumps by
    :data:`GAVE_UP` in the same atomic step that tells it whether the other had come
    after all, so the two always agree: both go on, or both return False."""
    if atomic_add(state, HANDSHAKE, 1) == 1:  # the other is waiting (or gave up: >= GAVE_UP)
        return True
    if atomic_load(state, HANDSHAKE) >= GAVE_UP:
        return False
    spins = 0
    while atomic_load(state, HANDSHAKE) == 1:
        if spins >= HANDSHAKE_SPINS:
            return atomic_add(state, HANDSHAKE, GAVE_UP) == 2  # 2: it came just now
        wait(spins)
        spins += 1
    return True

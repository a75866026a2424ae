"""A large CPU call runs on more than one thread (DESIGN.md section 3: at::parallel_for is
inline, so without -fopenmp in the extension's flags it runs on the calling thread only).

Not a timing test: it reads each thread's CPU time (utime + stime) from
/proc/self/task/<tid>/stat before and after the calls and checks that at least two threads
did a real share of the work.

The dense forward also passes in a build without OpenMP, because its BLAS calls are threaded
by themselves; the depthwise cases (1-row GEMMs that BLAS runs on one thread) and grad_bias
(no BLAS at all) only pass when cnnops' own parallel_for runs on several threads."""
import os

import pytest
import torch

import cnnops

ops = torch.ops.cnnops

pytestmark = [
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs at least 2 CPUs"),
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc/self/task"),
]

MIN_TOTAL_TICKS = 40  # keep calling until the process spent this much CPU time (clock ticks)
MAX_CALLS = 2000  # fast calls (grad_bias: ~0.3 ms) need many to add up to MIN_TOTAL_TICKS


def thread_cpu_ticks():
    """{thread id: utime + stime in clock ticks} for every thread of this process."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        # fields after "(comm)": state is field 3, utime field 14, stime field 15
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def _calls():
    x = torch.randn(8, 64, 56, 56)
    w_dense = torch.randn(64, 64, 3, 3)
    w_dw = torch.randn(64, 1, 3, 3)
    args = ([1, 1], [1, 1, 1, 1], [1, 1])
    go = torch.randn(8, 64, 56, 56)
    return {
        "dense_forward": lambda: cnnops.F.conv2d(x, w_dense, None, 1, 1),
        "depthwise_forward": lambda: cnnops.F.conv2d(x, w_dw, None, 1, 1, 1, 64, "reflect"),
        "depthwise_grad_input": lambda: ops.conv2d_grad_input(go, w_dw, list(x.shape), *args, 64, "zeros", False),
        "depthwise_grad_weight": lambda: ops.conv2d_grad_weight(go, x, list(w_dw.shape), *args, 64, "zeros", False),
        "grad_bias": lambda: ops.conv2d_grad_bias(go),
    }


CASES = ["dense_forward", "depthwise_forward", "depthwise_grad_input", "depthwise_grad_weight", "grad_bias"]


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("case", CASES)
def test_large_cpu_call_uses_several_threads(case, two_threads):
    call = _calls()[case]
    call()  # warm-up: starts the thread pool, allocates
    before = thread_cpu_ticks()
    after = before
    for _ in range(MAX_CALLS):
        call()
        after = thread_cpu_ticks()
        if sum(after.values()) - sum(before.values()) >= MIN_TOTAL_TICKS:
            break
    delta = {tid: after[tid] - before.get(tid, 0) for tid in after}
    total = sum(delta.values())
    assert total > 0, "no CPU time was recorded at all"
    busy = {tid: d for tid, d in delta.items() if d >= max(2, 0.1 * total)}
    assert len(busy) >= 2, (
        f"{case}: only {len(busy)} thread(s) did a share of the work; CPU ticks per thread: {delta}")

"""One benchmark per item of lgmstm.benchmarks.plan(); see conftest.py."""
from lgmstm import benchmarks

# Iterations per benchmarked call: about this many flops, so that a fit's
# set-up stays small beside its steps; the same for every implementation of
# a group, so that the group compares like with like.
FLOPS_PER_CALL = 1e7


def test_case(benchmark, item):
    run = item.prepare()
    iterations = max(1, round(FLOPS_PER_CALL / item.flops))
    benchmark.group = item.group
    benchmark.extra_info.update(
        case=item.case.name, size=item.size.describe(), dtype=item.dtype.name,
        implementation=item.implementation.name, threads=item.threads,
        iterations_per_call=iterations, flops_per_call=item.flops * iterations)
    with benchmarks.thread_count(item.threads):
        benchmark(run, iterations)

"""One benchmark per item of lgmstm.benchmarks.plan(); see conftest.py."""
from lgmstm import benchmarks


def test_case(benchmark, item):
    run = item.prepare()
    # Iterations per benchmarked call: about benchmarks.FLOPS_PER_CALL flops,
    # the same for every implementation of a group; a door row: one call
    # (its steady peer: the epochs of the long fit).
    iterations = item.iterations_per_call
    benchmark.group = item.group
    benchmark.extra_info.update(
        case=item.case.name, size=item.size.describe(), dtype=item.dtype.name,
        implementation=item.implementation.name, threads=item.threads,
        iterations_per_call=iterations,
        flops_per_call=None if item.flops is None else item.flops * iterations)
    if item.case is benchmarks.DOOR:
        target = item.size.target
        benchmark.extra_info.update(
            versus=item.size.versus,
            target=target and target.describe(item.size.versus))
    with benchmarks.thread_count(item.threads):
        benchmark(run, iterations)

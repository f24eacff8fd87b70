"""`agent.benches.stats`, the benchmarks' one stats helper (pure logic): numpy's linear percentiles
over the measured values only, rounded, and one machine description."""

from __future__ import annotations

from agent.benches.stats import machine, median, p95, percentile, summary


def test_percentiles_interpolate_between_ranks_and_skip_what_was_not_measured():
    values = [40.0, None, 10.0, 30.0, 20.0]  # measured: 10, 20, 30, 40
    assert median(values) == 25.0  # halfway between the 2nd and 3rd
    assert p95(values) == 38.5  # rank 0.95 * 3 = 2.85: 30 + 0.85 * 10
    assert percentile(values, 0) == 10.0 and percentile(values, 100) == 40.0
    assert percentile([0.01234, 0.05678], 50, digits=3) == 0.035 and percentile([0.01234], 50) == 0.0
    assert median([]) is None and p95([None]) is None


def test_summary_counts_measured_values_and_keeps_the_fields_asked_for_in_order():
    assert summary([3, None, 1, 2]) == {"n": 3, "p50": 2.0, "p95": 2.9, "max": 3.0}
    assert summary([]) == {"n": 0, "p50": None, "p95": None, "max": None}
    s = summary([0.0512, None], ("p50", "p95", "n"), digits=3)
    assert s == {"p50": 0.051, "p95": 0.051, "n": 1} and list(s) == ["p50", "p95", "n"]


def test_machine_names_cores_cpu_memory_python_and_system():
    m = machine()
    assert list(m) == ["cores", "cpu_model", "memory_gib", "python", "system"]
    assert m["cores"] >= 1 and m["cpu_model"] and m["python"].count(".") == 2

"""The benchmark harness: spec.py (what to measure: BenchSpec, Variant), run.py (run_bench: the
baseline and the variants on one machine in one run, the result table and JSON), measure.py (one
variant set up and timed, peak memory), baseline.py (the per-sample PIL pipeline), images.py
(the files both pipelines read), machine.py (what it ran on, the matmul peak), timing.py (the one
timer), processes.py (each variant in a process of its own, timed round-robin), loop.py (the
training loop's own overhead), pipeline.py (data loader throughput), layers.py (what the per-layer
convolution benchmarks share)."""

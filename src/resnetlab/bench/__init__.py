"""The benchmark harness: spec and variants, the baseline pipeline, measurement, the machine, loop overhead, bench images."""

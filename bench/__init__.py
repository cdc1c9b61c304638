"""The benchmarks behind `make bench` (issue 7): one module per benchmark, run by `bench.run`.

Each benchmark measures the project's own code in the sandbox (real apiserver, real
virt-controller and virt-api with the virt-handler player, swtpm) together with a baseline
measured in the same run, and writes `bench/results/<name>.json`; `bench.report` turns those
files into BENCHMARKS.md. A benchmark whose dependency is missing writes status "not-run" with
the reason instead of a number.
"""

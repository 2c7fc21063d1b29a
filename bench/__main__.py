"""`make bench`: every benchmark, ours and Envoy's side by side in one run, ratios printed.

Absolute numbers on a shared 2-core machine are noise; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = [
    "bench.http1",
    "bench.access_log",
    "bench.http2",
    "bench.concurrency",
    "bench.proxied",
    "bench.stub_push",
    "bench.lds_push",
    "bench.hot_restart",
    "bench.churn",
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--large", action="store_true", help="the 10,000-listener variants")
    parser.add_argument("only", nargs="*", help="run only these (e.g. http1 lds_push)")
    args = parser.parse_args()
    failures = 0
    for module_name in BENCHMARKS:
        short = module_name.rpartition(".")[2]
        if args.only and short not in args.only:
            continue
        print(f"== {short}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(module_name)
            for line in module.run(args.large):
                print(line, flush=True)
        except Exception as error:  # one broken benchmark must not hide the others
            failures += 1
            print(f"   FAILED: {type(error).__name__}: {error}", flush=True)
        print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

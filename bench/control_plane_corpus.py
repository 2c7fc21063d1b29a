"""How much of a real control plane's output Envoy and xds-proxy accept (run locally).

    python -m bench.control_plane_corpus DIR [DIR ...]

Every `*.yaml` under the directories is a resource list in the shape control planes keep as
golden files (`resources: [{name, resource: {'@type': ...}}]`, e.g. Kuma's
`pkg/xds/generator/testdata/**/*.golden.yaml`). Each is pushed over ADS to a real Envoy and
to xds-proxy (listeners moved to 127.0.0.1 on free ports, placeholder secrets served for the
names it references and does not hold). A file is accepted fully when every type is ACKed and
every listener is active. Prints one line per file and the top NACK reasons of each proxy.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

from tests.helpers.corpus import (
    load_resource_list,
    localize,
    push_and_observe,
    with_placeholder_secrets,
)


def _reason(nack: str) -> str:
    """A NACK text without names and numbers, to count reasons."""
    text = re.sub(r"'[^']*'", "'…'", nack)
    text = re.sub(r"\d+", "N", text)
    return text[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    files = sorted(p for d in args.dirs for p in d.rglob("*.yaml"))
    totals = {"envoy": 0, "xds-proxy": 0}
    reasons: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in totals}
    for path in files:
        sections = with_placeholder_secrets(localize(load_resource_list(path)))
        line = [path.name]
        for kind in totals:
            with tempfile.TemporaryDirectory() as workdir:
                observed, _, _ = push_and_observe(
                    kind, sections, Path(workdir), timeout=args.timeout
                )
            totals[kind] += observed.accepted_fully
            for nack in observed.nacks:
                reasons[kind][_reason(nack)] += 1
            answered = ",".join(f"{s}={a}" for s, a in sorted(observed.answered.items()))
            line.append(
                f"{kind}: {'OK' if observed.accepted_fully else 'no'} ({answered}; "
                f"{len(observed.listeners_active)}/{observed.listeners_pushed} listeners)"
            )
        print(" | ".join(line), flush=True)
    print(
        f"\naccepted fully: Envoy {totals['envoy']}/{len(files)}, "
        f"xds-proxy {totals['xds-proxy']}/{len(files)}"
    )
    for kind, counter in reasons.items():
        print(f"\ntop NACK reasons, {kind}:")
        for reason, count in counter.most_common(10):
            print(f"  {count:3d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

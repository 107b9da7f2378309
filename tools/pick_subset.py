"""Picks the sanitizer's CI subset from a full run: the hostile-input tests, then the cheapest tests that reach every
(C++ entry point, backend) pair the full run reached.

  python tools/pick_subset.py build/sanitize/reports/coverage.json
writes tools/sanitize_ci_tests.txt (the tests) and tools/sanitize_ci_coverage.txt (the pairs tools/sanitize.sh --ci
requires). Rerun it after a full `tools/sanitize.sh` when --ci reports a pair no longer called.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# Always in: the hostile-input tests (where undefined behaviour hides), the emulator's fiber runtime (its context
# switches are what ASan is told about), and cheap files that walk many code paths behind one entry point: every
# conv algorithm on non-finite data, the 3D star kernels, matching, whole U-Nets with split channel inputs.
ALWAYS = ("tests/test_fuzz.py", "tests/ops/test_hostile_ops.py", "tests/star/test_hostile_star.py",
          "tests/emu/test_simt.py", "tests/ops/test_nonfinite.py", "tests/star/test_polyhedra.py",
          "tests/star/test_matching.py", "tests/nn/test_unet.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("coverage", help="coverage.json of a full tools/sanitize.sh run")
    ap.add_argument("--out-dir", default=str(Path(__file__).parent))
    args = ap.parse_args()
    data = json.loads(Path(args.coverage).read_text())
    universe = set().union(*(set(v["calls"]) for v in data.values()))

    chosen, covered, seconds = [], set(), 0.0
    for test, v in data.items():
        if test.split("::")[0] in ALWAYS or test == "<collection>":  # collection happens in every run
            covered |= set(v["calls"])
            seconds += v["seconds"]
    # Greedy weighted set cover: most new pairs per second (plus a per-test overhead) first.
    rest = {t: v for t, v in data.items() if t.split("::")[0] not in ALWAYS and t != "<collection>" and v["calls"]}
    while covered != universe:
        best = max(rest, key=lambda t: len(set(rest[t]["calls"]) - covered) / (rest[t]["seconds"] + 0.05))
        gain = set(rest[best]["calls"]) - covered
        if not gain:
            break
        chosen.append(best)
        covered |= gain
        seconds += rest.pop(best)["seconds"]

    out = Path(args.out_dir)
    header = ("# The sanitizer's CI subset (tools/sanitize.sh --ci), made by tools/pick_subset.py from a full run:\n"
              f"# {len(ALWAYS)} files always, then {len(chosen)} tests that reach the {len(universe)} (entry point, "
              f"backend) pairs of the full run; {seconds:.0f} s there.\n")
    (out / "sanitize_ci_tests.txt").write_text(header + "\n".join(list(ALWAYS) + sorted(chosen)) + "\n")
    (out / "sanitize_ci_coverage.txt").write_text(
        "# (C++ entry point, backend) pairs tools/sanitize.sh --ci must call; made by tools/pick_subset.py\n"
        + "\n".join(sorted(universe)) + "\n")
    print(f"{len(ALWAYS)} files + {len(chosen)} tests, {seconds:.0f} s in the full run, {len(universe)} pairs")


if __name__ == "__main__":
    main()

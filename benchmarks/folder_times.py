"""Time per test folder, for two checkouts of the repository, interleaved on the same machine.

    python benchmarks/folder_times.py --before /tmp/st-before --after . --rounds 2 \\
        tests/unit tests/integration/notifier tests/integration/agent

Each checkout needs its own ``.venv`` (``make install`` in it). Each round runs every folder once in each
checkout (before, after, alternating which goes first) with ``--junitxml``, and reads the test count and the
time pytest measured from it. Prints per folder: tests, median seconds, seconds per test, and the ratio
after/before of the medians (machines are noisy: compare in one run, never across runs). A folder that fails
in a checkout is reported as such (its time still counts: a failing suite is not a fast one).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.suite_times import per_test


@dataclass
class Run:
    tests: int
    seconds: float
    failed: int
    per_test: dict[str, float] = field(default_factory=dict)  # "file::name" -> seconds


def run_folder(checkout: Path, folder: str) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        command = [
            str(checkout / ".venv" / "bin" / "python"),
            "-m",
            "pytest",
            folder,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ]
        subprocess.run(command, cwd=checkout, capture_output=True, check=False)
        if not report.exists():
            return Run(0, float("nan"), 1)
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        tests = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        return Run(tests, float(suite.get("time", "nan")), failed, per_test(report))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="the baseline checkout")
    parser.add_argument("--after", type=Path, required=True, help="the checkout compared with it")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[tuple[str, str], list[Run]] = {}
    for round_no in range(args.rounds):
        for folder in args.folders:
            order = ["before", "after"] if round_no % 2 == 0 else ["after", "before"]
            for name in order:
                run = run_folder(checkouts[name], folder)
                runs.setdefault((folder, name), []).append(run)
                print(
                    f"round {round_no + 1}/{args.rounds} {folder} {name}: {run.tests} tests, "
                    f"{run.seconds:.1f} s{f', {run.failed} failed' if run.failed else ''}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"{'folder':<32} {'before':>22} {'after':>22} {'after/before':>13} {'same tests: before, after':>30}"
    )
    totals = {"before": 0.0, "after": 0.0}
    for folder in args.folders:
        cells = []
        medians = {}
        for name in ("before", "after"):
            folder_runs = runs[(folder, name)]
            median = statistics.median(r.seconds for r in folder_runs)
            tests = folder_runs[-1].tests
            failed = " !" if any(r.failed for r in folder_runs) else ""
            medians[name] = median
            totals[name] += median
            cells.append(f"{tests:>4} tests {median:>7.1f} s{failed}")
        # The tests both checkouts have (same file and name): their own time, median over the rounds.
        common = set(runs[(folder, "before")][-1].per_test) & set(runs[(folder, "after")][-1].per_test)
        same = {
            name: statistics.median(sum(r.per_test.get(t, 0.0) for t in common) for r in runs[(folder, name)])
            for name in ("before", "after")
        }
        print(
            f"{folder:<32} {cells[0]:>22} {cells[1]:>22} {medians['after'] / medians['before']:>12.2f}x "
            f"{len(common):>6}: {same['before']:>6.1f} s, {same['after']:>6.1f} s"
        )
    print(
        f"{'total':<32} {totals['before']:>20.1f} s {totals['after']:>20.1f} s "
        f"{totals['after'] / totals['before']:>12.2f}x"
    )


if __name__ == "__main__":
    main()

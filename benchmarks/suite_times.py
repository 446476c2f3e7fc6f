"""The whole suite's time in two checkouts, from their pytest JUnit reports: the same tests, and the new ones.

    (cd BEFORE && .venv/bin/python -m pytest tests -p no:cacheprovider --junitxml=/tmp/before.xml)
    (cd AFTER && .venv/bin/python -m pytest tests -p no:cacheprovider --junitxml=/tmp/after.xml)
    python benchmarks/suite_times.py /tmp/before.xml /tmp/after.xml \\
        --group "issue 10=tests.e2e.test_cluster_faults,tests.integration.test_migrations_race"

Run the two suites one after the other on a quiet machine (never at once: they share the cores and the
PostgreSQL server). Prints the whole suite's time in each (pytest's per-test times: setup, call and
teardown; not the session's start), the time of the tests both have (same module and name) per folder, and
the new tests' time per ``--group`` (named sets of test modules or packages, by dotted name) and for the
rest, so that the after-suite can be compared with the before-suite with and without a group's new tests.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path


def per_test(report: Path) -> dict[str, float]:
    """``module::name`` → seconds, for every test that ran (skipped ones left out)."""
    root = ET.parse(report).getroot()
    times: dict[str, float] = {}
    for suite in [root] if root.tag == "testsuite" else list(root):
        for case in suite.iter("testcase"):
            if case.find("skipped") is None:
                times[f"{case.get('classname')}::{case.get('name')}"] = float(case.get("time", 0.0))
    return times


def folder(test: str) -> str:
    """``tests.integration.issuer`` for a test in tests/integration/issuer/, ``tests.unit`` for unit tests."""
    parts = test.split("::")[0].split(".")
    return ".".join(parts[:3]) if parts[1:2] == ["integration"] and len(parts) > 3 else ".".join(parts[:2])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=PREFIX,PREFIX",
        help="a named set of new tests, by module or package name (repeatable)",
    )
    args = parser.parse_args()
    before, after = per_test(args.before), per_test(args.after)
    same = set(before) & set(after)
    print(f"whole suite    before {len(before):>4} tests {sum(before.values()):>7.1f} s")
    print(f"               after  {len(after):>4} tests {sum(after.values()):>7.1f} s")
    print(f"\n{'same tests, by folder':<36} {'tests':>5} {'before':>9} {'after':>9} {'ratio':>7}")
    by_folder_b: defaultdict[str, float] = defaultdict(float)
    by_folder_a: defaultdict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    for test in same:
        by_folder_b[folder(test)] += before[test]
        by_folder_a[folder(test)] += after[test]
        count[folder(test)] += 1
    for name in sorted(count):
        b, a = by_folder_b[name], by_folder_a[name]
        ratio = a / b if b else float("nan")
        print(f"{name:<36} {count[name]:>5} {b:>8.1f}s {a:>8.1f}s {ratio:>6.2f}x")
    same_b, same_a = sum(by_folder_b.values()), sum(by_folder_a.values())
    overall = same_a / same_b if same_b else float("nan")
    print(f"{'all of them':<36} {len(same):>5} {same_b:>8.1f}s {same_a:>8.1f}s {overall:>6.2f}x")

    groups: dict[str, tuple[str, ...]] = {}
    for spec in args.group:
        name, _, prefixes = spec.partition("=")
        groups[name.strip()] = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    new = [t for t in after if t not in before]
    grouped: defaultdict[str, float] = defaultdict(float)
    grouped_count: Counter[str] = Counter()
    for test in new:
        module = test.split("::")[0]
        name = next(
            (g for g, ps in groups.items() if any(module == p or module.startswith(p + ".") for p in ps)),
            "other new",
        )
        grouped[name] += after[test]
        grouped_count[name] += 1
    print(f"\n{'new tests':<36} {'tests':>5} {'after':>9}")
    for name in [*groups, "other new"]:
        print(f"{name:<36} {grouped_count[name]:>5} {grouped[name]:>8.1f}s")
    if groups:
        without = sum(after.values()) - sum(grouped[g] for g in groups)
        print(
            f"\nafter without the groups' new tests: {without:.1f} s against {sum(before.values()):.1f} s "
            f"before ({without / sum(before.values()):.2f}x)"
        )


if __name__ == "__main__":
    main()

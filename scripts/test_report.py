#!/usr/bin/env python3
"""Reads ctest's JUnit file and prints every skipped test with its reason.

Usage: test_report.py JUNIT_XML [--fail-on-skip]
With --fail-on-skip (./isorun test under CI as root) any skipped test fails the run: CI has every
tool and privilege the tests ask for, so a skip there means a test silently did not run.
"""
import re
import sys
import xml.etree.ElementTree as ET


def skip_reason(output: str) -> str:
    # GoogleTest prints "file:line: Skipped", the message, then "[  SKIPPED ] Name".
    m = re.search(r": Skipped\n(.*?)\n\[  SKIPPED \]", output, re.S)
    if m and m.group(1).strip():
        return " ".join(m.group(1).split())
    for line in output.splitlines():
        if "skip" in line.lower():
            return line.strip()
    return "(no reason printed)"


def main() -> int:
    args = sys.argv[1:]
    fail_on_skip = "--fail-on-skip" in args
    files = [a for a in args if not a.startswith("--")]
    if len(files) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        root = ET.parse(files[0]).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"test report: cannot read {files[0]}: {e}", file=sys.stderr)
        return 2
    skipped = []
    for case in root.iter("testcase"):
        if case.get("status") == "skipped" or case.find("skipped") is not None:
            out = case.findtext("system-out") or ""
            skipped.append((case.get("name", "?"), skip_reason(out)))
    if not skipped:
        print("test report: no test was skipped")
        return 0
    print(f"test report: {len(skipped)} test(s) skipped:")
    for name, reason in skipped:
        print(f"  SKIPPED {name}: {reason}")
    if fail_on_skip:
        print("test report: under CI as root every test must run; the skips above fail the run",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

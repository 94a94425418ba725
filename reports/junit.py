"""JUnit XML of the policy checks: one test suite per run, one test case per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reports.policy import Check


def _counts(checks: list[Check]) -> dict[str, str]:
    return {
        "tests": str(len(checks)),
        "failures": str(sum(c.status == "fail" for c in checks)),
        "errors": "0",
        "skipped": str(sum(c.status == "skip" for c in checks)),
    }


def to_junit(checks: list[Check]) -> str:
    """The checks as a JUnit XML document; a failure's message is its one-line reason."""
    root = ET.Element("testsuites", {"name": "equinox audit", **_counts(checks)})
    runs = list(dict.fromkeys(c.run for c in checks))
    for run in runs:
        mine = [c for c in checks if c.run == run]
        suite = ET.SubElement(root, "testsuite", {"name": run, **_counts(mine)})
        for check in mine:
            case = ET.SubElement(suite, "testcase", {"classname": run, "name": check.name, "time": "0"})
            if check.status == "fail":
                ET.SubElement(case, "failure", {"message": check.reason, "type": "threshold"}).text = check.line
            elif check.status == "skip":
                ET.SubElement(case, "skipped", {"message": check.reason})
            else:
                ET.SubElement(case, "system-out").text = check.line
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

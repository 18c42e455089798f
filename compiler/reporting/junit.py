"""JUnit XML for CI: one test suite of named cases, each passed, failed or skipped."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree


@dataclass(frozen=True)
class JunitCase:
    """One test case; ``failure`` or ``skipped`` holds the message when it did not pass."""

    classname: str
    name: str
    failure: str | None = None
    skipped: str | None = None


def write_junit(path: Path, suite_name: str, cases: list[JunitCase]) -> None:
    """Write the suite to ``path`` atomically (a temporary file renamed into place)."""
    suite = ElementTree.Element(
        "testsuite", name=suite_name, tests=str(len(cases)),
        failures=str(sum(c.failure is not None for c in cases)),
        skipped=str(sum(c.skipped is not None for c in cases)))
    for case in cases:
        element = ElementTree.SubElement(suite, "testcase", classname=case.classname,
                                         name=case.name)
        if case.failure is not None:
            ElementTree.SubElement(element, "failure", message=case.failure).text = case.failure
        elif case.skipped is not None:
            ElementTree.SubElement(element, "skipped", message=case.skipped)
    handle, temporary = tempfile.mkstemp(prefix=".junit-", suffix=".xml", dir=path.parent)
    os.close(handle)
    try:
        ElementTree.ElementTree(suite).write(temporary, encoding="utf-8", xml_declaration=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)

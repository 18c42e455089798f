"""What a build tells: ``report.json``/``report.md``, the self-contained ``report.html``, JUnit
XML, the quality gates and the comparison of two reports."""

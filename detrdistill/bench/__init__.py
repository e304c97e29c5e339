"""Benchmark suites: the paper's tables at CPU scale (``detrdistill bench SUITE``).

suites.py (the suites as data), overrides.py (dotted config keys), runner.py (teacher, runs,
resume, predictions), bootstrap.py (paired bootstrap of AP over val images), report.py
(the results page), plot.py (its figure).
"""

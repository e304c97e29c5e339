"""Benchmark suites: the paper's tables at CPU scale (``detrdistill bench SUITE``).

suites.py (the suites as data), plan.py (which runs, their configs), runner.py (teacher, runs,
resume, predictions), timing.py (step times measured interleaved), bootstrap.py (paired
bootstrap of AP over val images), summary.py (the numbers), render.py (the Markdown page),
plot.py (its figure), report.py (all three written).
"""

import subprocess
import sys

import pytest

# The modules that import across packages (data, models, distill, explain, metrics, training).
ENTRY_POINTS = ["kdlens.demo", "kdlens.distill", "kdlens.explain", "kdlens.metrics.evaluate"]


def test_every_package_imports_first_in_a_fresh_interpreter():
    """Catches import cycles that only show when a module is the first one imported."""
    children = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True) for name in ENTRY_POINTS}
    failures = {name: child.communicate()[1].strip().splitlines()[-1:] for name, child in children.items() if child.wait() != 0}
    if failures:
        pytest.fail(f"imports that fail when first: {failures}")

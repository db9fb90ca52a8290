import os
import sys

# The oracle lives beside the tests; the package itself comes from the installed wheel (or from
# PYTHONPATH=python with SQA_LIBRARY set, as on the GPU machine).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def small_scale() -> bool:
    """SQA_TEST_SCALE=small shrinks the sweeps (the sanitizer CI run uses it)."""
    return os.environ.get("SQA_TEST_SCALE", "") == "small"

"""What the grader's own tests share: a conftest for a tiny course of their own."""

# The conftest of a fake course: ``--target`` and an ``ex`` fixture that imports the
# graded module, as tests/exercises/conftest.py does for the real course.
FAKE_CONFTEST = '''
import importlib
import pytest

def pytest_addoption(parser):
    parser.addoption("--target", default="fakepkg")

@pytest.fixture
def ex(request):
    target = request.config.getoption("--target")
    return importlib.import_module(f"{target}.{request.module.MODULE}")
'''

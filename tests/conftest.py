import inspect
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from emoma.config import DataConfig, load_config
from emoma.data import table_from_frame
from emoma.synthetic import make_frame

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("EMOMA_REAL_DATA", ROOT.parent / "shared" / "data" / "wesad_merged.csv"))


FIXTURE_MARKS = {"ray_session": ("ray",), "cluster": ("ray", "cluster"), "s3": ("s3",), "real_data": ("real_data",)}
STARTS_A_SEARCH = ("search.py", "search_command(", '"search", ')  # Ray in a subprocess or here


def pytest_collection_modifyitems(items):
    """The tier markers a test's fixtures and code imply (pyproject.toml lists them): a test that starts Ray or
    reads the real table is slow; other slow tests are marked by hand."""
    for item in items:
        marks = {m for fixture in getattr(item, "fixturenames", ()) for m in FIXTURE_MARKS.get(fixture, ())}
        function = getattr(item, "function", None)
        if function is not None and any(text in inspect.getsource(function) for text in STARTS_A_SEARCH):
            marks.add("ray")
        if marks & {"ray", "real_data"}:
            marks.add("slow")  # Ray's start alone is seconds, the real table's runs a minute: each took 7 s or more
        for mark in sorted(marks):
            item.add_marker(mark)


@pytest.fixture(scope="session")
def small_frame():
    """A 6-subject synthetic table, ~30 windows per subject."""
    return make_frame(seed=1, subjects=(2, 3, 4, 5, 6, 7), windows_scale=0.4)


@pytest.fixture(scope="session")
def small_table(small_frame):
    return table_from_frame(small_frame, DataConfig(), source="small")


@pytest.fixture
def smoke_config(tmp_path):
    """configs/smoke.yaml with the fold-plan cache in a temporary folder."""
    return load_config(ROOT / "configs" / "smoke.yaml", [f"cv.cache_dir={tmp_path / 'cache'}"])


@pytest.fixture(scope="session")
def real_data():
    if not REAL_DATA.is_file():
        pytest.skip(f"real WESAD table not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray (2 CPUs) for a module's tests that search in this process."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=False, logging_level="WARNING", include_dashboard=False)
    yield
    ray.shutdown()


def interruptible(command):
    """`command` (python, script, args) started so that SIGINT raises KeyboardInterrupt, as Ctrl-C does in a
    terminal, even where the tests run with SIGINT ignored (a background job inherits SIG_IGN, and Python then
    leaves it ignored)."""
    prelude = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    return [command[0], "-c", prelude, *map(str, command[1:])]


def run_in_process(main, argv, capsys):
    """A CLI's `main(argv)` run in this process: its exit code, stdout and stderr, as subprocess.run gives them."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)

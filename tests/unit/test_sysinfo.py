"""What a result says about the machine and the code it ran on."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.report.summary import _local_changes
from common.sysinfo import cpu_info, cpu_label, project_commit


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for rel in ("common/run.py", "backends/torch/train.py", "README.md", "reports/kd/report.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


@pytest.mark.parametrize("edited, dirty", [
    ((), False),
    (("README.md", "reports/kd/report.md"), False),  # what `make reports` rewrites between recipes
    (("common/run.py",), True),
    (("backends/torch/train.py", "README.md"), True),
])
def test_only_changes_to_what_a_run_executes_make_a_result_dirty(checkout: Path, edited: tuple[str, ...],
                                                                 dirty: bool) -> None:
    for rel in edited:
        (checkout / rel).write_text("v2\n")
    c = project_commit(checkout)
    assert c is not None and c["dirty"] is dirty
    assert c["changed"] == sorted(r for r in edited if r.startswith(("common/", "backends/")))


def test_outside_a_checkout_the_commit_is_not_recorded(tmp_path: Path) -> None:
    assert project_commit(tmp_path) is None


def test_report_names_the_changed_files_and_says_when_an_old_result_did_not() -> None:
    assert _local_changes({"commit": "a" * 40, "dirty": False, "changed": []}) == ""
    assert _local_changes({"commit": "a" * 40, "dirty": True, "changed": ["common/run.py"]}) \
        == " with local changes to `common/run.py`"
    assert "7 more" in _local_changes({"commit": "a", "dirty": True, "changed": [f"common/{i}.py" for i in range(12)]})
    assert "not recorded which" in _local_changes({"commit": "a" * 40, "dirty": True})


def test_cpu_label_tells_cpu_generations_with_one_model_name_apart() -> None:
    zen3 = {"model": "AMD EPYC", "family": 25, "model_number": 1}
    zen4 = {"model": "AMD EPYC", "family": 25, "model_number": 17}
    assert cpu_label(zen3) != cpu_label(zen4)
    assert cpu_label(zen3) == "AMD EPYC (family 25 model 1)"
    assert cpu_label({"model": "AMD EPYC"}) == "AMD EPYC"  # a result written before the numbers were recorded


def test_cpu_info_reads_the_family_and_model_numbers_of_this_machine() -> None:
    info = cpu_info()
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    assert isinstance(info["family"], int) and isinstance(info["model_number"], int)


def test_compare_lists_two_cpu_generations_with_one_model_name_as_a_difference() -> None:
    from common.report.compare import _env_facts
    results = [{"environment": {"cpu": {"model": "AMD EPYC", "family": 25, "model_number": n, "logical_cores": 2,
                                        "flags": flags}}}
               for n, flags in ((1, ["avx2", "fma"]), (17, ["avx2", "avx512f", "fma"]))]
    cpu = _env_facts(results)["CPU"]
    assert "AMD EPYC (family 25 model 1; 2 cores; avx2 fma)" in cpu
    assert "AMD EPYC (family 25 model 17; 2 cores; avx2 avx512f fma)" in cpu

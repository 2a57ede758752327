"""The command line, run as users run it: ``python -m parsl_flows ...`` in a fresh process.

Every CLI call is a subprocess with the test's tmp directory as its working directory, so
runs land in ``./parsl-flows-store`` there, as they would for a user.  Runs use real Parsl
(the local HighThroughputExecutor, or Parsl's thread pool where the executor is beside the
point).  Waiting is done by polling the store with a deadline, never by sleeping a guess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_usage_error, cli, wait_for

import parsl_flows as flows
from parsl_flows.cli import describe
from parsl_flows.cli.inputs import UsageError, expand, load_inputs, parse_set
from parsl_flows.cli.plans import load_plan

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 300

SLOW_FLOW = """
import time

from parsl_flows import step
from parsl_flows.workflow import map_, new_workflow


@step(returns="y")
def slow_double(x: float, delay: float) -> float:
    time.sleep(delay)
    return 2 * x


@step(returns="total")
def add_up(y) -> float:
    return float(sum(y.to_array()))


@step(returns="z")
def add(a: int, b: int) -> int:
    return a + b


flow = new_workflow("slow").then(map_(slow_double, "x[i] -> y[i]")).then(add_up)


def make_flow():
    return flow.rename("made")
"""


def run_id_of(output: str) -> str:
    m = re.search(r"^run\s+(\S+)", output, re.MULTILINE)
    assert m, output
    return m.group(1)


def driver_pid_of(output: str) -> int:
    m = re.search(r"driver pid (\d+)", output)
    assert m, output
    return int(m.group(1))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory with the slow flow in ``flows.py``."""
    (tmp_path / "flows.py").write_text(SLOW_FLOW)
    return tmp_path


def store_of(cwd: Path) -> Path:
    return cwd / "parsl-flows-store"


# -- usage: nothing is submitted --------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["run", "status", "log", "graph", "plan", "list", "resume", "restart"]
)
def test_every_command_has_help_with_examples(command: str, tmp_path: Path) -> None:
    result = cli(command, "--help", cwd=tmp_path, check=0)
    assert "examples:" in result.stdout
    assert f"python -m parsl_flows {command}" in result.stdout


def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    result = cli(cwd=tmp_path, check=2)
    assert "COMMAND" in result.stdout


def test_a_file_with_a_syntax_error_is_one_line_and_exit_2(work: Path) -> None:
    (work / "bad.py").write_text("from parsl_flows import step\ndef f(x)\n    return x\n")
    result = cli("run", "bad.py:flow", "--set", "x=1", cwd=work)
    assert_usage_error(result, "bad.py:2: syntax error")
    assert not store_of(work).exists()


def test_a_file_that_fails_to_import_is_one_line_and_exit_2(work: Path) -> None:
    (work / "broken.py").write_text("import no_such_module_anywhere\n")
    assert_usage_error(cli("run", "broken.py:flow", cwd=work), "No module named")
    assert not store_of(work).exists()


def test_debug_shows_the_traceback(work: Path) -> None:
    (work / "broken.py").write_text("import no_such_module_anywhere\n")
    result = cli("run", "broken.py:flow", "--debug", cwd=work, check=2)
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("parsl_flows: error: ")


def test_an_unknown_name_lists_what_the_file_defines(work: Path) -> None:
    result = cli("run", "flows.py:flw", "--set", "x=[1]", "--set", "delay=0", cwd=work)
    assert_usage_error(result, "has no 'flw'", "workflows flow", "steps add, add_up, slow_double")
    assert not store_of(work).exists()


def test_missing_inputs_are_named(work: Path) -> None:
    result = cli("run", "flows.py:flow", "--set", "x=[1, 2]", cwd=work)
    assert_usage_error(result, "missing input(s) delay", "--inputs FILE or --set NAME=VALUE")
    assert not store_of(work).exists()


def test_unknown_inputs_are_named(work: Path) -> None:
    result = cli(
        "run", "flows.py:flow", "--set", "x=[1]", "--set", "delay=0", "--set", "z=1", cwd=work
    )
    assert_usage_error(result, "unknown input(s) z")
    assert not store_of(work).exists()


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("missing.json", None, "cannot read inputs file missing.json"),
        ("bad.json", '{"x": [1, 2],}', "bad.json:1:14: not valid JSON"),
        ("list.json", "[1, 2]", "must hold a mapping"),
        ("inputs.txt", "x: 1", "must end in .json, .yaml or .yml"),
        ("bad_form.json", '{"x": {"linspace": [0]}, "delay": 0}', "not a valid linspace"),
        ("no_array.json", '{"x": "nowhere.npy", "delay": 0}', "no array file"),
    ],
)
def test_bad_inputs_files_are_one_line_and_exit_2(
    work: Path, name: str, text: str | None, fragment: str
) -> None:
    if text is not None:
        (work / name).write_text(text)
    assert_usage_error(cli("run", "flows.py:flow", "--inputs", name, cwd=work), fragment)
    assert not store_of(work).exists()


def test_bad_options_are_one_line_and_exit_2(work: Path) -> None:
    args = ["run", "flows.py:flow", "--set", "x=[1]", "--set", "delay=0"]
    assert_usage_error(cli(*args, "--env", "nowhere", cwd=work), "--env nowhere")
    assert_usage_error(cli(*args, "--config", "none.py", cwd=work), "--config none.py")
    assert_usage_error(
        cli("run", "flows.py:flow", "--set", "novalue", cwd=work), "expected name=value"
    )
    assert_usage_error(cli("list", "--since", "soon", cwd=work), "--since 'soon'")
    assert_usage_error(cli("frobnicate", cwd=work), "invalid choice")
    assert not store_of(work).exists()


def test_an_unknown_run_is_exit_2(work: Path) -> None:
    for command in (["status", "nope"], ["log", "nope"], ["graph", "nope"], ["resume", "nope"]):
        assert_usage_error(cli(*command, cwd=work), "no run 'nope'")


def test_status_and_list_of_an_empty_store(work: Path) -> None:
    assert "no runs" in cli("status", cwd=work, check=0).stdout
    assert "no runs" in cli("list", cwd=work, check=0).stdout
    assert "no running runs" in cli("list", "--running", cwd=work, check=0).stdout


def test_plan_describes_and_draws_without_running(work: Path) -> None:
    target = str(EXAMPLES / "electrostatics.py") + ":flow"
    text = cli("plan", target, cwd=work, check=0).stdout
    assert "map modified_electrostatics: V_left[a], V_right[b] -> electrostatics[a, b]" in text
    assert "up to 5 attempts" in text
    assert "returns: electrostatics, avg_electrostatic_charge (= average_charge)" in text
    result = cli("plan", target, "-o", "plan.svg", cwd=work, check=0)
    assert "wrote plan.svg" in result.stdout
    assert (work / "plan.svg").read_text().lstrip().startswith("<?xml")
    assert not store_of(work).exists()


# -- the pieces, in process ---------------------------------------------------------------------


def test_array_forms_and_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(4.0))
    import xarray as xr

    xr.Dataset({"v": ("i", np.ones(3)), "w": ("i", np.zeros(3))}).to_netcdf(tmp_path / "d.nc")
    xr.Dataset({"v": ("i", np.ones(2))}).to_netcdf(tmp_path / "one.nc")
    assert np.allclose(expand({"linspace": [0, 1, 3]}, tmp_path, "x"), [0, 0.5, 1])
    assert np.allclose(
        expand({"logspace": {"start": 0, "stop": 2, "num": 3}}, tmp_path, "x"), [1, 10, 100]
    )
    assert np.array_equal(expand({"arange": 3}, tmp_path, "x"), [0, 1, 2])
    assert expand({"array": [[1, 2], [3, 4]]}, tmp_path, "x").shape == (2, 2)
    assert np.array_equal(expand("a.npy", tmp_path, "x"), np.arange(4.0))
    assert np.array_equal(expand("d.nc:w", tmp_path, "x"), np.zeros(3))
    assert np.array_equal(expand("one.nc", tmp_path, "x"), np.ones(2))
    nested = expand({"a": [{"arange": 2}], "b": "text"}, tmp_path, "x")
    assert np.array_equal(nested["a"][0], [0, 1]) and nested["b"] == "text"
    assert expand([1, 2], tmp_path, "x") == [1, 2]  # lists stay lists
    with pytest.raises(UsageError, match="2 variables"):
        expand("d.nc", tmp_path, "x")
    with pytest.raises(UsageError, match="no variable 'u'"):
        expand("d.nc:u", tmp_path, "x")


def test_set_values_are_json_or_else_strings() -> None:
    assert parse_set("n=3") == ("n", 3)
    assert parse_set("flag=false") == ("flag", False)
    assert parse_set("limits=[-1, 1]") == ("limits", [-1, 1])
    assert parse_set('x={"linspace": [0, 1, 2]}') == ("x", {"linspace": [0, 1, 2]})
    assert parse_set("name=some text") == ("name", "some text")
    assert parse_set("eq=a=b") == ("eq", "a=b")
    for bad in ("novalue", "=3", "not a name=3"):
        with pytest.raises(UsageError):
            parse_set(bad)


def test_yaml_inputs_are_read_relative_to_their_file(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "x.npy", np.arange(3))
    (tmp_path / "sub" / "in.yaml").write_text(
        "x: x.npy\nV: {linspace: [0, 1, 5]}\nflag: true\nlimits: [-0.4, 0.4]\n"
    )
    inputs = load_inputs(tmp_path / "sub" / "in.yaml")
    assert np.array_equal(inputs["x"], [0, 1, 2]) and inputs["V"].shape == (5,)
    assert inputs["flag"] is True and inputs["limits"] == [-0.4, 0.4]
    (tmp_path / "bad.yaml").write_text("x: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_inputs(tmp_path / "bad.yaml")


def test_load_plan_takes_workflows_steps_and_functions(work: Path) -> None:
    flow = load_plan(f"{work / 'flows.py'}:flow")
    assert flow.name == "slow" and flow.parameters == {"x", "delay"}
    assert load_plan(f"{work / 'flows.py'}:make_flow").name == "made"
    assert load_plan(f"{work / 'flows.py'}:add").step_names == ("add",)
    assert load_plan(str(work / "flows.py")).name == "slow"  # NAME defaults to flow
    with pytest.raises(UsageError, match="is a function of name; the command line calls it"):
        load_plan("parsl_flows.workflow:new_workflow")  # a module, and a function with a parameter
    with pytest.raises(UsageError, match="nor an importable module"):
        load_plan("no_such_module_here:flow")
    with pytest.raises(UsageError, match="not a workflow"):
        load_plan(f"{work / 'flows.py'}:time")
    (work / "raising.py").write_text("def make():\n    raise RuntimeError('no plan today')\n")
    with pytest.raises(UsageError, match=r"make\(\) raised RuntimeError: no plan today"):
        load_plan(f"{work / 'raising.py'}:make")


def test_describe_marks_mapped_and_optional_inputs(work: Path) -> None:
    text = describe(load_plan(f"{work / 'flows.py'}:flow"))
    assert "inputs:  x[], delay" in text
    assert "map slow_double: x[i] -> y[i]" in text


# -- real runs -------------------------------------------------------------------------------


@pytest.mark.slow
def test_main_job_runs_and_status_log_graph_work_on_its_id(tmp_path: Path) -> None:
    result = cli(
        "run",
        str(EXAMPLES / "electrostatics.py") + ":flow",
        "--inputs",
        str(EXAMPLES / "electrostatics.json"),
        cwd=tmp_path,
    )
    # The main job ends cleanly: random charge failures are retried until they succeed.
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = result.stdout
    first_id = run_id_of(out)
    assert f"store  {store_of(tmp_path)}" in out
    assert re.search(r"modified_electrostatics\s+ok\s+0\s+200\s+0", out), out
    assert "avg_electrostatic_charge" in out and "array (10, 20), 200 of 200" in out
    assert "exit code 0" in out

    # The failure story: voltages outside V_limits fail for good (exit status 1).
    result = cli("restart", first_id, "--set", "V_limits=[-0.4, 0.4]", cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    out = result.stdout
    run_id = run_id_of(out)
    assert run_id != first_id
    assert re.search(r"modified_electrostatics\s+partial\s+401\s+64\s+136", out), out
    assert re.search(r"modified_get_charge\s+\w+\s+\d+\s+\d+", out), out
    assert "array (10, 20), 64 of 200" in out
    assert "exit code 450" in out

    run = flows.load_run(run_id, store=store_of(tmp_path))
    assert run.exit_code == 450
    assert run.step("modified_electrostatics").attributes["n_done"] == 64
    assert run.step("make_geometry").record.n_reused == 1  # unchanged: taken from the first run

    status = cli("status", run_id[:-2], cwd=tmp_path, check=1)
    assert "modified_electrostatics" in status.stdout and "exit 401" in status.stdout
    log = cli("log", run_id, "modified_electrostatics", cwd=tmp_path, check=0)
    assert "out of acceptable range" in log.stdout
    assert "workflow 'electrostatics' started" in cli("log", run_id, cwd=tmp_path, check=0).stdout
    by_position = cli("log", run_id, "4", cwd=tmp_path, check=0).stdout  # modified_get_charge
    assert "attempt 1: submitting 64 elements" in by_position
    assert_usage_error(
        cli("log", run_id, "nope", cwd=tmp_path), "no step 'nope'", "0 make_geometry"
    )
    graph = cli("graph", run_id, "-o", "run.png", cwd=tmp_path, check=0)
    assert "wrote run.png" in graph.stdout
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    listing = cli("list", cwd=tmp_path, check=0).stdout
    assert run_id in listing and "failed" in listing
    assert run_id in cli("status", cwd=tmp_path, check=0).stdout


@pytest.mark.slow
def test_run_a_step_alone_a_function_and_inputs_with_arrays(work: Path) -> None:
    result = cli(
        "run", "flows.py:add", "--set", "a=1", "--set", "b=2", "--env", "threads", cwd=work
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+z\s+3$", result.stdout, re.MULTILINE), result.stdout

    np.save(work / "x.npy", np.arange(5.0))
    (work / "in.json").write_text(json.dumps({"x": "x.npy", "delay": 0}))
    result = cli("run", "flows.py:make_flow", "--inputs", "in.json", "--env", "threads", cwd=work)
    assert result.returncode == 0, result.stderr
    assert re.search(r"total\s+20\.0", result.stdout), result.stdout

    result = cli(
        "run", "flows.py:flow", "--inputs", "in.json", "--set", 'x={"linspace": [0, 1, 3]}',
        "--config", str(EXAMPLES.parent / "configs" / "threads.py"), cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"total\s+3\.0", result.stdout), result.stdout


@pytest.mark.slow
def test_a_failing_run_exits_1(work: Path) -> None:
    (work / "failing.py").write_text(
        textwrap.dedent(
            """
            from parsl_flows import step

            @step(returns="y")
            def boom(x):
                raise ValueError(f"no good: {x}")
            """
        )
    )
    result = cli("run", "failing.py:boom", "--set", "x=1", "--env", "threads", cwd=work)
    assert result.returncode == 1
    assert "ValueError: no good: 1" in result.stdout
    assert "exit code 450" in result.stdout


@pytest.mark.slow
def test_detach_returns_with_the_id_and_status_follows_to_the_end(work: Path) -> None:
    result = cli(
        "run", "flows.py:flow", "--set", 'x={"arange": [8]}', "--set", "delay=0.3", "--detach",
        cwd=work, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    run_id = run_id_of(result.stdout)
    assert "in the background" in result.stdout
    run_dir = store_of(work) / "runs" / run_id
    assert (run_dir / "run.json").exists()

    followed = cli("status", run_id, "--follow", cwd=work, check=0)
    assert re.search(r"total\s+56\.0", followed.stdout), followed.stdout
    assert "finished, exit code 0" in followed.stdout
    assert flows.load_run(run_dir).exit_code == 0
    driver_log = (run_dir / "driver.log").read_text()
    assert "finished, exit code 0" in driver_log
    assert not list(store_of(work).glob(".detached-*"))


@pytest.mark.slow
def test_detach_reports_usage_errors_without_a_run(work: Path) -> None:
    result = cli("run", "flows.py:flow", "--set", "x=[1]", "--detach", cwd=work)
    assert_usage_error(result, "missing input(s) delay")
    assert not (store_of(work) / "runs").exists()


@pytest.mark.slow
def test_list_running_shows_a_detached_run_while_it_runs(work: Path) -> None:
    result = cli(
        "run", "flows.py:flow", "--set", 'x={"arange": [4]}', "--set", "delay=30",
        "--env", "threads", "--detach", cwd=work, timeout=60,
    )  # fmt: skip
    run_id = run_id_of(result.stdout)
    pid = driver_pid_of(result.stdout)
    try:
        running = cli("list", "--running", cwd=work, check=0).stdout
        assert run_id in running and "running" in running
        assert [r.id for r in flows.report.running_workflows(store=store_of(work))] == [run_id]
        assert cli("status", run_id, cwd=work, check=0).stdout.count("running") >= 1
        if hasattr(flows.Run, "resume"):  # a live driver keeps its run
            assert_usage_error(cli("resume", run_id, cwd=work), "already being driven")
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: flows.load_run(run_id, store=store_of(work)).status != "running",
        "the killed run to stop counting as running",
    )
    assert "no running runs" in cli("list", "--running", cwd=work, check=0).stdout


@pytest.mark.slow
def test_restart_changes_inputs_and_reuses_the_rest(work: Path) -> None:
    first = cli(
        "run", "flows.py:flow", "--set", "x=[1, 2, 3]", "--set", "delay=0", "--env", "threads",
        cwd=work, check=0,
    )  # fmt: skip
    old_id = run_id_of(first.stdout)
    second = cli("restart", old_id, "--set", "x=[1, 2, 3, 4]", cwd=work, check=0)
    assert f"restart of {old_id} (changed: x)" in second.stdout
    new_id = run_id_of(second.stdout.split("\n", 1)[1])
    assert new_id != old_id
    assert re.search(r"total\s+20\.0", second.stdout), second.stdout
    assert_usage_error(cli("restart", old_id, "--set", "nope=1", cwd=work), "unknown input(s) nope")


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(work: Path) -> None:
    result = cli(
        "run", "flows.py:flow", "--set", 'x={"arange": [12]}', "--set", "delay=0.5",
        "--detach", cwd=work, timeout=60,
    )  # fmt: skip
    run_id = run_id_of(result.stdout)
    run = flows.load_run(run_id, store=store_of(work))
    wait_for(lambda: run.step("slow_double").record.n_done >= 2, "some elements to finish")
    os.kill(driver_pid_of(result.stdout), signal.SIGKILL)
    wait_for(lambda: run.status == "interrupted", "the run to show as interrupted")
    assert "interrupted" in cli("list", cwd=work, check=0).stdout

    resumed = cli("resume", run_id[:18], "--detach", cwd=work, check=0, timeout=60)
    assert run_id_of(resumed.stdout) == run_id
    followed = cli("status", run_id, "--follow", cwd=work, check=0)
    assert re.search(r"total\s+132\.0", followed.stdout), followed.stdout
    assert "reused" in followed.stdout
    driver_log = (run.path / "driver.log").read_text()
    assert driver_log.count("(detached, driver pid") == 2  # both drivers, one log
    again = cli("resume", run_id, cwd=work, check=0)
    assert "nothing to resume" in again.stdout


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_run(work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PARSL_FLOWS_STORE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "parsl_flows", "run", "flows.py:flow",
         "--set", 'x={"arange": [12]}', "--set", "delay=0.5"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        runs = store_of(work) / "runs"
        wait_for(
            lambda: runs.is_dir() and any((r / "run.json").exists() for r in runs.iterdir()),
            "the run to be created",
        )
        run = flows.load_run(next(runs.iterdir()))
        wait_for(lambda: run.step("slow_double").record.n_done >= 2, "some elements to finish")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert f"resume {run.id}" in err
    wait_for(lambda: run.status == "interrupted", "the run to show as interrupted")
    resumed = cli("resume", run.id, cwd=work, check=0)
    assert re.search(r"total\s+132\.0", resumed.stdout), resumed.stdout

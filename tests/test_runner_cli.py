"""The runner's files and the ``dht-fast`` subcommands, on tiny settings."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dht_fast.cli import main
from dht_fast.experiments import runner
from dht_fast.experiments.runner import (
    SUMMARY_COLUMNS,
    TeachConfig,
    atomic_write,
    new_run_folder,
    run_experiment,
)

TINY = ["--seeds", "1", "--iterations", "3", "--greedy-steps", "3", "--no-progress"]


def _tiny_config(**kw):
    return TeachConfig(**{"seeds": [0, 1], "iterations": 4, "greedy_steps": 3, **kw})


def test_a_run_writes_its_files(tmp_path):
    folder, summary = run_experiment(_tiny_config(), tmp_path, name="t", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "curves.csv", "moons.png", "parts", "summary.csv"]
    with open(folder / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [r["teacher"] for r in rows] == list(runner.TEACHERS)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["seeds"] == [0, 1] and "torch" in meta["versions"]
    with open(folder / "curves.csv") as fh:
        assert sum(1 for _ in fh) == 1 + len(runner.TEACHERS) * 2 * 5


def test_two_runs_never_share_a_folder(tmp_path):
    folders = {new_run_folder(tmp_path, "same") for _ in range(3)}
    assert len(folders) == 3
    a, _ = run_experiment(_tiny_config(teachers=["sgd"]), tmp_path, name="r", progress=False)
    b, _ = run_experiment(_tiny_config(teachers=["sgd"]), tmp_path, name="r", progress=False)
    assert a != b and (a / "summary.csv").exists() and (b / "summary.csv").exists()


def _kill_on_call(monkeypatch, at_call):
    """Make the teachers raise KeyboardInterrupt at their ``at_call``-th batch, counted over
    the whole run, as a kill would."""
    real, calls = runner.make_teacher, []

    def failing(*args):
        teacher = real(*args)

        def next_batch(learner):
            calls.append(1)
            if len(calls) == at_call:
                raise KeyboardInterrupt
            return type(teacher).next_batch(teacher, learner)

        teacher.next_batch = next_batch
        return teacher

    monkeypatch.setattr(runner, "make_teacher", failing)


def test_a_run_killed_midway_leaves_no_results(tmp_path, monkeypatch):
    _kill_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_tiny_config(), tmp_path, name="killed", progress=False)
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "parts"]
    assert list((folder / "parts").iterdir()) == []


def test_a_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = _tiny_config(teachers=["sgd", "greedy"])
    _, whole = run_experiment(cfg, tmp_path / "whole", name="w", progress=False)
    # 2 seeds x 4 iterations of sgd finish; greedy is killed on its second batch.
    _kill_on_call(monkeypatch, 2 * 4 + 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "killed", name="k", progress=False)
    monkeypatch.undo()
    (folder,) = (tmp_path / "killed").iterdir()
    assert [p.name for p in (folder / "parts").iterdir()] == ["moons__sgd.pt"]
    other = _tiny_config(teachers=["imt"], iterations=9)  # ignored: the stored config wins
    again, resumed = run_experiment(other, tmp_path / "unused", progress=False, resume=folder)
    assert again == folder and not (tmp_path / "unused").exists()
    for a, b in zip(resumed, whole, strict=True):
        assert {**a, "wall_seconds": 0} == {**b, "wall_seconds": 0}
    with pytest.raises(runner.ConfigError, match="finished run"):
        run_experiment(cfg, tmp_path, resume=folder)


def test_atomic_write_keeps_nothing_on_failure(tmp_path):
    def boom(fh):
        fh.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "summary.csv", boom)
    assert list(tmp_path.iterdir()) == []


def test_demo_prints_the_summary_table(tmp_path, capsys):
    assert main(["demo", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| greedy | moons |" in out and "| imt | moons |" in out and "| sgd | moons |" in out
    (folder,) = tmp_path.iterdir()
    assert (folder / "moons.png").stat().st_size > 0


def test_teach_with_every_teacher_and_a_batch(tmp_path):
    argv = ["teach", "--teacher", *runner.TEACHERS, "--batch-size", "2", "--greedy-starts", "2"]
    assert main([*argv, *TINY, "--out", str(tmp_path)]) == 0


def test_reproduce_fig2(tmp_path):
    try:
        runner.load_dataset("mnist")
    except runner.DatasetNotFound:
        pytest.skip("MNIST files not available")
    assert main(["reproduce", "fig2", *TINY, "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    with open(folder / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["dataset"], r["teacher"]) for r in rows} == {
        (d, t) for d in ("moons", "mnist") for t in runner.TEACHERS}


@pytest.mark.parametrize("argv, message", [
    (["teach", "--iterations", "0"], "--iterations must be >= 1"),
    (["teach", "--seeds", "0"], "--seeds must be >= 1"),
    (["demo", "--greedy-step-size", "-1"], "--greedy-step-size must be > 0"),
    (["teach", "--dataset", "mnist", "--data-root", "{tmp}"], "MNIST not found"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path / "nowhere")) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_python_m_dht_fast(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "dht_fast", "teach", "--teacher", "imt", *TINY,
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| imt | moons |" in done.stdout


@pytest.mark.parametrize("argv", [["teach"], ["demo"], ["reproduce", "fig2"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0 and "--seeds" in capsys.readouterr().out

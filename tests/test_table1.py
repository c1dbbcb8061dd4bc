"""The Table 1 harness end to end on tiny generated data: summary, fresh folders, kill and resume,
and a 2-process (gloo) run against a 1-process run with the same global batch."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dht_fast.cli import CliError
from dht_fast.experiments import table1
from dht_fast.experiments.runner import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "generated", "--generated-size", "96", "64", "--batch-size", "16",
        "--epochs", "2", "--seeds", "1", "--no-progress", "--backend", "torch"]


def _args(*argv):
    parser = argparse.ArgumentParser()
    table1.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def _only_dir(parent: Path) -> Path:
    (folder,) = [p for p in parent.iterdir() if p.is_dir()]
    return folder


def _runs(folder: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))}


def test_end_to_end_summary_and_fresh_folders(tmp_path, capsys):
    args = _args(*TINY, "--arch", "mlp", "--seeds", "2", "--out", tmp_path)
    assert table1.run(args) == 0
    folder = _only_dir(tmp_path)
    rows = table1.read_summary(folder / "summary.csv")
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert [r["teacher"] for r in rows] == ["sgd", "random", "dht"]
    for row in rows:
        assert row["dataset"] == "generated/mlp" and row["seeds"] == "2"
        assert row["iterations"] == str(2 * 6)  # 2 epochs of 96 / 16
        assert 0 <= float(row["final_accuracy_mean"]) <= 1 and float(row["final_accuracy_std"]) >= 0
        assert row["final_distance_mean"] == ""
    runs = _runs(folder)
    assert len(runs) == 6 and len(runs["dht-seed1"]["history"]) == 2
    assert len(list((folder / "checkpoints").glob("*.pt"))) == 6
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == "mlp" and "torch" in config["versions"]
    out = capsys.readouterr().out
    assert "accuracy %" in out and "dht" in out
    # A second run never reuses the folder.
    assert table1.run(_args(*TINY, "--arch", "mlp", "--policy", "sgd", "--out", tmp_path)) == 0
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


class Killed(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    # CNN-3 with augmentation, momentum and a milestone: every piece of state must come back.
    argv = [*TINY, "--arch", "cnn3", "--policy", "random", "dht", "--epochs", "3",
            "--generated-size", "48", "32", "--milestones", "40", "--lr", "0.05"]
    assert table1.run(_args(*argv, "--out", tmp_path / "full")) == 0
    full = _only_dir(tmp_path / "full")

    def kill(policy, seed, epoch):
        if policy == "dht" and epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        table1.run(_args(*argv, "--out", tmp_path / "killed"), on_epoch_end=kill)
    killed = _only_dir(tmp_path / "killed")
    assert not (killed / "summary.csv").exists()
    assert table1.run(_args("--resume", killed, "--no-progress")) == 0
    a, b = _runs(full), _runs(killed)
    assert a.keys() == b.keys() == {"random-seed0", "dht-seed0"}
    for key in a:
        assert a[key]["history"] == b[key]["history"], key
    sa = torch.load(full / "checkpoints" / "dht-seed0.pt", weights_only=False)
    sb = torch.load(killed / "checkpoints" / "dht-seed0.pt", weights_only=False)
    for name, tensor in sa["model"].items():
        assert torch.equal(tensor, sb["model"][name]), name


def test_cli_errors_name_the_argument(tmp_path):
    with pytest.raises(CliError, match="--arch cnn3"):
        table1.run(_args("--dataset", "mnist", "--arch", "cnn3", "--out", tmp_path))
    with pytest.raises(CliError, match="--resume"):
        table1.run(_args("--resume", tmp_path, "--out", tmp_path))
    with pytest.raises(CliError, match="cifar-100-python"):
        table1.run(_args("--dataset", "cifar100", "--out", tmp_path))
    with pytest.raises(CliError, match="--seeds"):
        table1.run(_args(*TINY, "--seeds", "0", "--out", tmp_path))


def test_summary_and_table_formatting():
    results = {("sgd", 0): {"final_accuracy": 0.9, "iterations": 10, "wall_seconds": 1.0},
               ("sgd", 1): {"final_accuracy": 0.8, "iterations": 10, "wall_seconds": 2.0},
               ("dht", 0): {"final_accuracy": 0.95, "iterations": 10, "wall_seconds": 3.0}}
    rows = table1.summarize(results, "mnist/mlp")
    assert rows[0]["final_accuracy_mean"] == pytest.approx(0.85)
    assert rows[0]["final_accuracy_std"] == pytest.approx(0.05)
    assert rows[0]["wall_seconds"] == 3.0 and rows[1]["final_accuracy_std"] == 0
    text = table1.format_table(rows, table1.PAPER_TABLE1[("mnist", "mlp")])
    assert "85.00 +- 5.00" in text and "92.45" in text and "95.02" in text


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    argv = [*TINY, "--arch", "mlp", "--policy", "sgd", "dht", "--no-augment", "--epochs", "2",
            "--batch-size", "32"]
    assert table1.run(_args(*argv, "--out", tmp_path / "one")) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", "-m", "dht_fast.experiments.table1", *argv,
           "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _only_dir(tmp_path / "one"), _only_dir(tmp_path / "two")
    for policy in ("sgd", "dht"):
        ra = _runs(one)[f"{policy}-seed0"]
        rb = _runs(two)[f"{policy}-seed0"]
        assert ra["iterations"] == rb["iterations"] == 2 * 3
        for ha, hb in zip(ra["history"], rb["history"]):
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
            assert abs(ha["test_accuracy"] - hb["test_accuracy"]) <= 1 / 64
        ma = torch.load(one / "checkpoints" / f"{policy}-seed0.pt", weights_only=False)["model"]
        mb = torch.load(two / "checkpoints" / f"{policy}-seed0.pt", weights_only=False)["model"]
        for name in ma:
            torch.testing.assert_close(ma[name], mb[name], rtol=1e-4, atol=1e-5)


def test_large_batch_lr_scaling_and_warmup():
    from dht_fast.experiments.train_neural import LrSchedule, TrainConfig, effective_lr

    cfg = TrainConfig(arch="mlp", epochs=1, batch_size=1024, lr=0.1, momentum=0.9,
                      weight_decay=0.0, milestones=(), warmup_epochs=5, scale_lr=True, eps=0.1,
                      steps=15, lookahead=5, step_size=None, backend="auto", amp="off")
    assert effective_lr(cfg) == pytest.approx(0.8)
    assert effective_lr(TrainConfig(**{**cfg.__dict__, "scale_lr": False})) == 0.1
    assert effective_lr(TrainConfig(**{**cfg.__dict__, "batch_size": 64})) == 0.1
    schedule = LrSchedule(warmup=10, milestones=(20, 30))
    assert [schedule(i) for i in (0, 4, 9, 19)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert schedule(20) == pytest.approx(0.1) and schedule(35) == pytest.approx(0.01)
    args = table1._resolve(_args("--dataset", "cifar10", "--batch-size", "1024"))
    assert args.warmup_epochs == 5 and args.lr == 0.1 and args.milestones == [20000, 30000, 37500]
    assert table1._resolve(_args("--dataset", "mnist")).warmup_epochs == 0

"""The command line: bad input exits 2 with the offending key or path named, and writes nothing."""

from __future__ import annotations

from medlatent.commands.cli import main


def test_unknown_config_key_exits_2_naming_it(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: vqvae3d\ntrain:\n  epoch: 3\n")
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert "train.epoch" in capsys.readouterr().err
    assert not out.exists()


def test_bad_override_exits_2_naming_it(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("model: vqvae3d\n")
    assert main(["train", str(config), "--set", "data.spatial_sizes=[8,8,8]", "--out", str(tmp_path / "r")]) == 2
    assert "data.spatial_sizes" in capsys.readouterr().err


def test_unknown_schedule_exits_2_before_any_run_is_made(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("model: vqvae3d\n")
    out = tmp_path / "r"
    assert main(["train", str(config), "--set", "train.schedule=linear", "--out", str(out)]) == 2
    assert "train.schedule" in capsys.readouterr().err
    assert not out.exists()


def test_run_commands_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_resume_without_checkpoint_names_it(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("model: vqvae3d\n")
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "last.pt" in capsys.readouterr().err


def test_resume_may_only_lengthen_the_run(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("model: vqvae3d\n")
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--resume", "--set", "train.epochs=9",
                 "--set", "train.lr=0.1", "--set", "loss.beta=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "loss" in err and "train.epochs," not in err

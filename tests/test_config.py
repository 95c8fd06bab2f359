"""Config loading: files, overrides, strict key and type errors, saving the resolved config."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tether.core.config import load_config, load_mapping, save_config
from tether.core.errors import ConfigError
from tether.robot.config import RobotConfig
from tether.robot.factory import load_robot_config, make_robot


@dataclass
class Arm:
    fps: float = 30.0
    port: str = "/dev/ttyUSB0"
    ids: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Session:
    name: str = "s"
    episodes: int = 10
    arm: Arm = field(default_factory=Arm)
    resume: bool = False
    note: str | None = None


def test_yaml_toml_and_overrides(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("name: demo\narm:\n  fps: 50\n")
    (tmp_path / "a.toml").write_text('name = "demo"\n[arm]\nfps = 50\n')
    for path in (tmp_path / "a.yaml", tmp_path / "a.toml"):
        cfg = load_config(Session, path, ["arm.ids=[3, 4]", "episodes=5", "note=hi"])
        assert cfg == Session(name="demo", episodes=5, arm=Arm(fps=50.0, ids=[3, 4]), note="hi")


def test_unknown_key_names_the_dotted_key(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'arm\.fsp'.*fps"):
        load_config(Session, None, ["arm.fsp=50"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("episodes=ten", r"'episodes' expects int"),
        ("arm.fps=fast", r"'arm.fps' expects float"),
        ("resume=1", r"'resume' expects bool"),
        ("arm.ids=[1, x]", r"'arm.ids\[1\]' expects int"),
        ("arm=3", r"'arm' must be a mapping"),
        ("episodes", r"must look like key.sub=value"),
    ],
)
def test_wrong_types_name_key_and_expected_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Session, None, [override])


def test_missing_and_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_mapping(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="could not be parsed"):
        load_mapping(tmp_path / "bad.yaml")
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(ConfigError, match="suffix"):
        load_mapping(tmp_path / "x.ini")


def test_saved_config_round_trips(tmp_path: Path):
    cfg = load_config(Session, None, ["arm.fps=50", "note=x"])
    for name in ("config.yaml", "config.json"):
        path = save_config(cfg, tmp_path / name)
        assert load_config(Session, path) == cfg


def test_robot_config_from_file_and_unknown_driver(tmp_path: Path):
    path = tmp_path / "robot.yaml"
    path.write_text(
        "name: bench\nfps: 50\narms:\n  - {name: a, driver: memory}\n"
        "cameras:\n  - {name: top, driver: mystery}\nsafety: {max_step: 0.02}\n"
    )
    cfg = load_robot_config(path)
    assert isinstance(cfg, RobotConfig) and cfg.safety.max_step == 0.02
    with pytest.raises(ConfigError, match="Unknown camera driver 'mystery'"):
        make_robot(cfg)
    assert load_robot_config("twin:lift", ["fps=50"]).twin_task == "lift"


@dataclass
class Rates:
    lr: float = 1e-3
    lr_backbone: float | None = None
    max_step: float = 0.1
    gains: list[float] = field(default_factory=lambda: [1.0])
    steps: int = 10
    name: str = "x"


def test_scientific_notation_works_wherever_a_float_is_expected(tmp_path: Path):
    # PyYAML (YAML 1.1) reads 1e-4, 3E5 and 1.0e5 as strings; they must still be numbers here
    (tmp_path / "r.yaml").write_text("lr: 1e-4\nmax_step: 1e-1\ngains: [1e-2, 2, 3.5E1]\nsteps: 1e5\n")
    cfg = load_config(Rates, tmp_path / "r.yaml", ["lr_backbone=3e-4", "name=1e3"])
    assert cfg == Rates(lr=1e-4, lr_backbone=3e-4, max_step=0.1, gains=[0.01, 2.0, 35.0], steps=100_000,
                        name="1e3")
    assert isinstance(cfg.lr, float) and isinstance(cfg.steps, int)
    assert load_config(Rates, None, ["lr=-2.5E-3", "lr_backbone=1.0e5"]).lr_backbone == 1e5
    assert load_config(Rates, None, ["lr_backbone=null"]).lr_backbone is None


@pytest.mark.parametrize("override, message", [
    ("lr=3e", r"'lr' expects float"),
    ("lr=fast", r"'lr' expects float"),
    ("lr='1e-4x'", r"'lr' expects float"),
    ("steps=1.5e0", r"'steps' expects int"),  # not whole: never rounded
    ("gains=[1e-2, x]", r"'gains\[1\]' expects float"),
])
def test_only_real_numbers_are_converted(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Rates, None, [override])

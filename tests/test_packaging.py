"""The core install loads models; training and evaluation name the extra they need when it is
missing (CI also checks a real core-only virtualenv: .ci/check_core_install.py)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from pararnn_hf import extras
from pararnn_hf.cli import main

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
# distribution name -> the module it installs, where they differ
MODULE_OF = {"lm-eval": "lm_eval"}


def _requirements(text: str) -> list[str]:
    names = []
    for line in text.strip().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(re.split(r"[\[<>=;! ]", line, maxsplit=1)[0])
    return names


def test_extras_in_step_with_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    declared = {k: _requirements(v) for k, v in cfg["options.extras_require"].items()}
    for extra, modules in extras.EXTRAS.items():
        assert sorted(MODULE_OF.get(d, d) for d in declared[extra]) == sorted(modules), extra
    assert declared["all"] == ["pararnn-hf"] and "train,eval" in cfg["options.extras_require"]["all"]
    core = [MODULE_OF.get(d, d) for d in _requirements(cfg["options"]["install_requires"])]
    assert not set(core) & {m for ms in extras.EXTRAS.values() for m in ms}, "an extra's module is in the core"


@pytest.fixture
def without(monkeypatch):
    def hide(*modules):
        real = extras._importable
        monkeypatch.setattr(extras, "_importable", lambda m: m not in modules and real(m))

    return hide


def test_require_extras_names_the_extra_and_the_missing_module(without):
    without("lm_eval")
    extras.require_extras("x", "train")  # train does not need lm_eval
    missing = r"x needs the optional dependencies \[eval\] \(missing: lm_eval\)"
    with pytest.raises(extras.MissingExtraError, match=missing):
        extras.require_extras("x", "eval")
    with pytest.raises(ImportError, match=r"pip install 'pararnn-hf\[train,eval\]'"):
        extras.require_extras("x", "train", "eval")


@pytest.mark.parametrize(
    "argv, hidden, extra",
    [
        (["train", "--output_dir", "never-written"], "accelerate", "train"),
        (["demo", "--output", "never-written"], "lm_eval", "train,eval"),
        (["eval", "--model", "never-read", "--tasks", "x"], "evaluate", "eval"),
    ],
    ids=["train", "demo", "eval"],
)
def test_cli_commands_name_their_missing_extra_in_one_line(argv, hidden, extra, without, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    without(hidden)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = str(exc.value)
    assert message.startswith(f"pararnn-hf {argv[0]}: this command needs the optional dependencies [{extra}]")
    assert "\n" not in message and hidden in message
    assert not (tmp_path / "never-written").exists()

"""`grasp --version` prints the installed package's version."""

from importlib.metadata import version

import pytest

from flows.cli import build_parser


def test_version_flag_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"grasp {version('grasp')}"

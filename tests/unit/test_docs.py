"""The README stays a short front page whose links resolve, and the CI calls its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_fits_the_front_page_budget() -> None:
    assert len(README.splitlines()) <= 150


def test_readme_begins_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: link to missing {target}"


def test_the_package_version_is_the_changelogs_newest_release() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    newest = re.search(r"^## (\S+) — (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert version and newest, "pyproject.toml version or a CHANGELOG release heading is missing"
    release, date = newest.groups()
    # An unreleased section ships as a .dev pre-release of that number; a dated one as the number.
    expected = f"{release}.dev0" if date == "unreleased" else release
    assert version.group(1) == expected

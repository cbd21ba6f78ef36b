""".ci/proto-breaking, CI's proof that the protos change additively only, refuses a break.

It runs on a scratch git repository holding this checkout's protos, buf.yaml and
the script itself, so the check is the one CI runs, on a history made up here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("protos/eventline/ingestion/v1/ingestion.proto")
FIELD = "  string customer_id = 2;\n"


def git(repository: Path, *arguments: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *arguments],
        cwd=repository,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def scratch_repository(tmp_path: Path) -> Path:
    """A repository whose first commit holds the protos and is the recorded baseline."""
    repository = tmp_path / "repository"
    (repository / ".ci").mkdir(parents=True)
    shutil.copytree(ROOT / "protos", repository / "protos")
    shutil.copy(ROOT / "buf.yaml", repository / "buf.yaml")
    shutil.copy(ROOT / ".ci" / "proto-breaking", repository / ".ci" / "proto-breaking")
    (repository / ".venv").symlink_to(ROOT / ".venv")
    (repository / ".gitignore").write_text(".venv\n")
    git(repository, "init", "-q", "-b", "main")
    git(repository, "add", ".")
    git(repository, "commit", "-q", "-m", "protos as released")
    (repository / ".ci" / "proto-baseline").write_text(
        f"# baseline\n{git(repository, 'rev-parse', 'HEAD')}\n"
    )
    git(repository, "add", ".")
    git(repository, "commit", "-q", "-m", "record the baseline")
    return repository


def edit(repository: Path, old: str, new: str, message: str) -> None:
    path = repository / PROTO
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    git(repository, "commit", "-q", "-am", message)


def check(repository: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repository / ".ci" / "proto-breaking")], cwd=repository, capture_output=True, text=True
    )


def test_an_additive_change_passes(tmp_path: Path) -> None:
    repository = scratch_repository(tmp_path)
    edit(repository, FIELD, FIELD + "  // A new field.\n  string added_later = 99;\n", "add a field")
    done = check(repository)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_renamed_field_fails(tmp_path: Path) -> None:
    repository = scratch_repository(tmp_path)
    edit(repository, FIELD, FIELD.replace("customer_id", "customer_ref"), "rename a field")
    done = check(repository)
    assert done.returncode == 1
    assert 'changed name from "customer_id" to "customer_ref"' in done.stdout


def test_a_field_removed_commits_after_it_was_added_fails(tmp_path: Path) -> None:
    """A field that was on main once stays, even when the landing that removes it ends with
    unrelated commits (HEAD's parent alone would not see it)."""
    repository = scratch_repository(tmp_path)
    added = FIELD + "  // A new field.\n  string added_later = 99;\n"
    edit(repository, FIELD, added, "add a field")
    edit(repository, added, FIELD, "remove it")
    (repository / "notes.txt").write_text("unrelated\n")
    git(repository, "add", "notes.txt")
    git(repository, "commit", "-q", "-m", "an unrelated change")
    done = check(repository)
    assert done.returncode == 1
    assert 'field "99" with name "added_later"' in done.stdout
    assert "add a field" in done.stderr

"""The deploy workflows run only after CI passed on the same commit, and deploy exactly that commit.

The workflow files are parsed and their structure asserted: `workflow_run` on the ci workflow is the
only trigger, one gate job checks `conclusion == 'success'` (and refuses pull requests' CI runs), every
other job needs it, and every checkout is of `github.event.workflow_run.head_sha`. The gate's script
(infra/scripts/deploy_target.py) is run against a real git repository with an origin and a tag.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
DEPLOY_WORKFLOWS = ["deploy-infra.yml", "deploy-frontend.yml"]
SCRIPT = REPO / "infra" / "scripts" / "deploy_target.py"
HEAD_SHA = "${{ github.event.workflow_run.head_sha }}"


def _workflow(name: str) -> dict:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as true
    return document


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


@pytest.mark.parametrize("name", DEPLOY_WORKFLOWS)
def test_deploy_runs_only_on_ci_success_of_the_same_commit(name: str) -> None:
    ci = _workflow("ci.yml")
    workflow = _workflow(name)
    assert set(workflow["on"]) == {"workflow_run"}, "a push or manual trigger would deploy untested code"
    trigger = workflow["on"]["workflow_run"]
    assert trigger["workflows"] == [ci["name"]]
    assert trigger["types"] == ["completed"]
    assert set(trigger["branches"]) == {"main", "v*"}

    jobs = workflow["jobs"]
    roots = [job_id for job_id, job in jobs.items() if not _needs(job)]
    assert roots == ["gate"]
    condition = " ".join(jobs["gate"]["if"].split())
    assert "github.event.workflow_run.conclusion == 'success'" in condition
    assert "github.event.workflow_run.event == 'push'" in condition
    assert "pull_request" not in condition
    assert "github.event.workflow_run.head_repository.full_name == github.repository" in condition

    def reaches_gate(job_id: str) -> bool:
        return job_id == "gate" or any(reaches_gate(need) for need in _needs(jobs[job_id]))

    for job_id, job in jobs.items():
        assert reaches_gate(job_id), f"{name}: job {job_id} does not wait for the gate"
        if job_id != "gate":
            assert "needs.gate.outputs.deploy == 'true'" in job["if"], f"{name}: {job_id} ignores the gate"
        checkouts = [step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout@")]
        assert checkouts, f"{name}: job {job_id} checks nothing out"
        for step in checkouts:
            assert step["with"]["ref"] == HEAD_SHA, f"{name}: {job_id} checks out another commit"

    text = (WORKFLOWS / name).read_text()
    # In a workflow_run, github.ref and github.sha are the default branch's, not the tested commit's.
    assert not re.search(r"github\.(ref|sha)\b", text)


def test_ci_runs_on_the_refs_that_deploy() -> None:
    push = _workflow("ci.yml")["on"]["push"]
    assert push["branches"] == ["main"]
    assert push["tags"] == ["v*"]


@pytest.mark.parametrize("name", ["ci.yml", *DEPLOY_WORKFLOWS])
def test_every_action_is_pinned_by_commit_sha(name: str) -> None:
    for job in _workflow(name)["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def _commit(clone: Path, path: str, message: str) -> str:
    target = clone / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(message)
    _git(clone, "add", path)
    _git(clone, "commit", "-q", "-m", message)
    return _git(clone, "rev-parse", "HEAD")


def _decide(clone: Path, workflow: str, head_branch: str, head_sha: str) -> dict[str, str]:
    output = clone.parent / f"output-{workflow}"
    output.write_text("")
    env = {**os.environ, "HEAD_BRANCH": head_branch, "HEAD_SHA": head_sha, "GITHUB_OUTPUT": str(output)}
    subprocess.run(
        [sys.executable, str(SCRIPT), workflow], cwd=clone, env=env, check=True, capture_output=True
    )
    return dict(line.split("=", 1) for line in output.read_text().splitlines())


def test_gate_deploys_main_by_changed_paths_and_only_real_tags_to_prod(tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    clone = tmp_path / "clone"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    _git(clone, "checkout", "-q", "-b", "main")
    first = _commit(clone, "README.md", "first")
    page = _commit(clone, "instarec_assets/serving/static/index.html", "page")
    stack = _commit(clone, "infra/stacks/serving.yaml", "stack")
    docs = _commit(clone, "docs/notes.md", "docs")
    _git(clone, "push", "-q", "origin", "main")
    # The release is tagged elsewhere: the gate must fetch the tag from origin to see it.
    releaser = tmp_path / "releaser"
    _git(tmp_path, "clone", "-q", str(origin), str(releaser))
    _git(releaser, "tag", "-a", "v1.0.0", "-m", "release", page)
    _git(releaser, "push", "-q", "origin", "v1.0.0")
    assert _git(clone, "tag", "--list") == ""

    # The root commit has no parent: everything deploys.
    assert _decide(clone, "infra", "main", first) == {"environment": "dev", "deploy": "true"}
    # A page change deploys the page, not the stacks; a stack change the reverse.
    assert _decide(clone, "frontend", "main", page) == {"environment": "dev", "deploy": "true"}
    assert _decide(clone, "infra", "main", page) == {"environment": "dev", "deploy": "false"}
    assert _decide(clone, "infra", "main", stack) == {"environment": "dev", "deploy": "true"}
    assert _decide(clone, "frontend", "main", stack) == {"environment": "dev", "deploy": "false"}
    assert _decide(clone, "infra", "main", docs)["deploy"] == "false"
    # A tag on the commit deploys everything to prod (the annotated tag peeled to its commit).
    assert _decide(clone, "infra", "v1.0.0", page) == {"environment": "prod", "deploy": "true"}
    # A tag name that does not point at the commit, or a branch named like a tag, deploys nothing.
    assert _decide(clone, "infra", "v1.0.0", stack) == {"environment": "", "deploy": "false"}
    assert _decide(clone, "infra", "v2-experiment", stack) == {"environment": "", "deploy": "false"}
    assert _decide(clone, "frontend", "feature", page) == {"environment": "", "deploy": "false"}

"""Decide whether a deploy workflow deploys the commit that CI just passed, and to which environment.

The deploy workflows start on `workflow_run` (CI completed), so GitHub's `paths` filters and the
pushed ref are not available to them. This script, run by their first job on a checkout of the CI
run's commit (with its parent), answers instead:

- `main` deploys to dev, and only when the commit (against its first parent: the whole pull request
  for a merge) touches a path of that workflow, as the `paths` filters did;
- a `v*` tag deploys to prod, whatever it touches, once the tag is seen to point at that commit (a
  branch named `v...` is not a tag);
- anything else deploys nothing.

    python infra/scripts/deploy_target.py infra|frontend   (HEAD_BRANCH and HEAD_SHA in the environment)

Writes `environment=` and `deploy=` lines to $GITHUB_OUTPUT (stdout without it).
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence

# The `paths` each workflow deploys for on main; "!" excludes. fnmatch's "*" also matches "/".
PAGE = ["instarec_assets/serving/static/*", "index.html", "*/index.html"]
WORKFLOW_PATHS: dict[str, list[str]] = {
    "infra": [
        "infra/*",
        "instarec_assets/*",
        *(f"!{pattern}" for pattern in PAGE),
        "pyproject.toml",
        "setup.py",
        "LICENSE",  # pyproject.toml's license-files: the image's `pip install .` reads it
        "workspace.yaml",
        "Makefile",
        ".github/workflows/deploy-infra.yml",
    ],
    "frontend": [*PAGE, ".github/workflows/deploy-frontend.yml"],
}


def touches(paths: Iterable[str], patterns: Sequence[str]) -> bool:
    """Whether any path is selected: it matches a pattern and no "!" pattern after it."""
    for path in paths:
        selected = False
        for pattern in patterns:
            if pattern.startswith("!"):
                if selected and fnmatch.fnmatchcase(path, pattern[1:]):
                    selected = False
            elif fnmatch.fnmatchcase(path, pattern):
                selected = True
        if selected:
            return True
    return False


def deploy_target(
    workflow: str, head_branch: str, head_sha: str, tag_commit: str | None, changed: Iterable[str] | None
) -> tuple[str, bool]:
    """(environment, deploy). `tag_commit`: the commit refs/tags/<head_branch> points at, if it exists;
    `changed`: the commit's changed paths, None when it has no parent (deploy everything)."""
    if head_branch.startswith("v") and tag_commit == head_sha:
        return "prod", True
    if head_branch == "main":
        return "dev", changed is None or touches(changed, WORKFLOW_PATHS[workflow])
    return "", False


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def _tag_commit(name: str) -> str | None:
    if not name.startswith("v"):
        return None
    fetched = _git("fetch", "--quiet", "--depth=1", "origin", f"+refs/tags/{name}:refs/tags/{name}")
    if fetched.returncode != 0:
        return None
    resolved = _git("rev-parse", "--verify", "--quiet", f"refs/tags/{name}^{{commit}}")
    return resolved.stdout.strip() or None


def _changed_paths(head_sha: str) -> list[str] | None:
    if _git("rev-parse", "--verify", "--quiet", f"{head_sha}^").returncode != 0:
        return None
    diff = _git("diff", "--name-only", f"{head_sha}^", head_sha)
    if diff.returncode != 0:
        raise SystemExit(f"deploy_target: git diff failed: {diff.stderr.strip()}")
    return [line for line in diff.stdout.splitlines() if line]


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[1] not in WORKFLOW_PATHS:
        print(f"usage: deploy_target.py {'|'.join(WORKFLOW_PATHS)}", file=sys.stderr)
        return 2
    head_branch, head_sha = os.environ["HEAD_BRANCH"], os.environ["HEAD_SHA"]
    environment, deploy = deploy_target(
        argv[1], head_branch, head_sha, _tag_commit(head_branch), _changed_paths(head_sha)
    )
    lines = f"environment={environment}\ndeploy={'true' if deploy else 'false'}\n"
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as handle:
            handle.write(lines)
    sys.stdout.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Post a pull request's plan as one comment, and update that comment on every push.

    python ci/plan-comment.py github plan.md   # in GitHub Actions
    python ci/plan-comment.py gitlab plan.md   # in GitLab CI

The comment is found again by a marker line at its top, so each pull request keeps
one plan comment however often CI runs. Python's standard library only.

GitHub: GITHUB_TOKEN (the workflow's own), GITHUB_REPOSITORY, PULL_REQUEST (its
number), GITHUB_API_URL (set by Actions). GitLab: MLSM_GITLAB_TOKEN (a project
access token: the job token may not write notes), CI_API_V4_URL, CI_PROJECT_ID,
CI_MERGE_REQUEST_IID (set by GitLab). A token that may not comment (a pull request
from a fork, or no token set) is said in one line, and is not a failure: the plan is
in the job's log and summary.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

MARKER = "<!-- mlsm-plan -->"
LIMIT = 60_000
"""Characters in one comment (GitHub takes 65,536): past it, the rest is cut."""


class Forge:
    def __init__(
        self, api: str, headers: dict[str, str], comments: str, comment: str, update: str
    ) -> None:
        self.api, self.headers = api.rstrip("/"), headers
        self.comments, self.comment = comments, comment
        """The comments' collection, and one comment ({id}), under `api`."""
        self.update = update
        """The method that edits a comment: PATCH on GitHub, PUT on GitLab."""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method)
        for key, value in {**self.headers, "Content-Type": "application/json"}.items():
            request.add_header(key, value)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def find(self) -> int | None:
        """The id of the plan comment already there, if any (every page read)."""
        page = 1
        while True:
            query = urllib.parse.urlencode({"per_page": 100, "page": page})
            found = self.call("GET", f"{self.comments}?{query}")
            for comment in found:
                if MARKER in (comment.get("body") or ""):
                    return int(comment["id"])
            if len(found) < 100:
                return None
            page += 1

    def post(self, body: str) -> str:
        existing = self.find()
        if existing is None:
            self.call("POST", self.comments, {"body": body})
            return "posted the plan"
        self.call(self.update, self.comment.format(id=existing), {"body": body})
        return f"updated the plan (comment {existing})"


def forge(name: str, env: dict[str, str]) -> Forge | str:
    """The forge to comment on, or why there is none."""
    if name == "github":
        token = env.get("GITHUB_TOKEN", "")
        repo, number = env.get("GITHUB_REPOSITORY", ""), env.get("PULL_REQUEST", "")
        if not (token and repo and number):
            return "GITHUB_TOKEN, GITHUB_REPOSITORY and PULL_REQUEST are needed to comment"
        api = env.get("GITHUB_API_URL", "https://api.github.com")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
        comments = f"/repos/{repo}/issues/{number}/comments"
        return Forge(api, headers, comments, f"/repos/{repo}/issues/comments/{{id}}", "PATCH")
    if name == "gitlab":
        token = env.get("MLSM_GITLAB_TOKEN", "")
        if not token:
            return "MLSM_GITLAB_TOKEN is not set (a project access token with scope api)"
        api, project = env.get("CI_API_V4_URL", ""), env.get("CI_PROJECT_ID", "")
        number = env.get("CI_MERGE_REQUEST_IID", "")
        if not (api and project and number):
            return "CI_API_V4_URL, CI_PROJECT_ID and CI_MERGE_REQUEST_IID are needed"
        notes = f"/projects/{urllib.parse.quote(project, safe='')}/merge_requests/{number}/notes"
        return Forge(api, {"PRIVATE-TOKEN": token}, notes, notes + "/{id}", "PUT")
    raise SystemExit(f"usage: plan-comment.py github|gitlab PLAN.md (not {name!r})")


def comment_body(plan: str) -> str:
    if len(plan) > LIMIT:
        plan = plan[:LIMIT] + "\n\n… cut here: the whole plan is in the job's log and summary.\n"
    return f"{MARKER}\n{plan}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plan-comment.py github|gitlab PLAN.md", file=sys.stderr)
        return 2
    name, path = argv
    target = forge(name, dict(os.environ))
    if isinstance(target, str):
        print(f"plan-comment: not commenting: {target}")
        return 0
    try:
        said = target.post(comment_body(Path(path).read_text(encoding="utf-8")))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            print(
                f"plan-comment: not commenting: the token may not ({exc.code} {exc.reason}; "
                "a pull request from a fork has a read-only token)"
            )
            return 0
        print(f"plan-comment: {exc.code} {exc.reason} from {exc.url}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"plan-comment: cannot reach {target.api}: {exc.reason}", file=sys.stderr)
        return 1
    print(f"plan-comment: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

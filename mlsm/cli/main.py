"""The `mlsmctl` entry point: commands, and the one place errors become exit codes.

Exit codes: 0 success, 1 a problem the user can fix (invalid manifests), 2 a usage
error (unknown option, missing path), 70 an internal error. Never a traceback unless
MLSM_DEBUG=1 asks for one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlsm import __version__, manifests, schemas, scores
from mlsm.cli import diffing, merging, predicting, reproducing, views
from mlsm.cli.client import DEFAULT_SERVER, Client
from mlsm.cli.output import Format, print_problems
from mlsm.errors import UserError

__all__ = ["app", "main"]

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70

app = typer.Typer(
    name="mlsmctl",
    help="mlsmctl controls mlsm: a GitOps reconciler for ML training jobs.\n\n"
    "Manifests (Node, Dataset, TrainingJob) live in git; `mlsmctl validate` checks "
    "them before you open a pull request.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mlsmctl {__version__}")
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
]


@app.callback()
def _root(version: VersionOption = False) -> None:
    """mlsmctl controls mlsm: a GitOps reconciler for ML training jobs."""


class UsageError(UserError):
    """A command used wrongly (exit 2)."""


@app.command()
def validate(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH...",
            help="Manifest files or directories (walked for *.yaml and *.yml); '-' reads "
            "standard input.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Format,
        typer.Option(
            "--output",
            "-o",
            help="text: one line per error; json; github: "
            "workflow commands that annotate a pull request's diff.",
        ),
    ] = Format.text,
    cross_checks: Annotated[
        bool,
        typer.Option(
            "--cross-checks/--no-cross-checks",
            help="Check references between objects (datasets, nodes, duplicates). Turn off "
            "to check a few files on their own.",
        ),
    ] = True,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Worker processes for parsing. Default: one per CPU core for large trees.",
        ),
    ] = None,
    version: VersionOption = False,
) -> None:
    """Check manifests: schema, references between objects, and YAML safety limits.

    Every error names file:line:col, the object, the field and the fix. Exit status:
    0 when everything is valid, 1 when anything is not, 2 on usage errors.
    """
    if paths == ["-"]:
        result = manifests.load_bytes(sys.stdin.buffer.read(), "<stdin>", cross_checks=cross_checks)
    elif "-" in paths:
        raise UsageError("'-' (standard input) cannot be mixed with paths")
    else:
        try:
            result = manifests.check_paths(paths, cross_checks=cross_checks, workers=jobs)
        except manifests.SourceError as exc:
            raise UsageError(str(exc)) from exc
    print_problems(
        result.problems,
        objects=result.checked,
        files=result.files,
        format=output,
        sweeps=result.sweeps,
    )
    if result.problems:
        raise typer.Exit(EXIT_INVALID)


_KIND_ALIASES = {
    alias: kind
    for kind, aliases in {
        "Node": ("node", "nodes", "no"),
        "Dataset": ("dataset", "datasets", "ds"),
        "TrainingJob": ("trainingjob", "trainingjobs", "job", "jobs", "tj"),
    }.items()
    for alias in aliases
}


@app.command()
def schema(
    kind: Annotated[
        str | None,
        typer.Argument(
            help="Node, Dataset or TrainingJob (or job, ds, ...). Default: all "
            "kinds, discriminated on 'kind'.",
            show_default=False,
        ),
    ] = None,
    version: VersionOption = False,
) -> None:
    """Print the JSON Schema of the manifests, for editors and other validators.

    With yaml-language-server, save it and put
    `# yaml-language-server: $schema=./mlsm.schema.json` at the top of a manifest.
    """
    name = None
    if kind is not None:
        name = _KIND_ALIASES.get(kind.lower())
        if name is None:
            raise UsageError(f"unknown kind '{kind}'; choose one of {', '.join(schemas.KINDS)}")
    typer.echo(json.dumps(schemas.json_schema(name), indent=2))


ServerOption = Annotated[
    str | None,
    typer.Option("--server", "-s", envvar="MLSM_SERVER", show_default=False,
                 help=f"The controller's URL (default {DEFAULT_SERVER})."),
]  # fmt: skip
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="MLSM_TOKEN", show_default=False,
                 help="An API token (reads from loopback need none)."),
]  # fmt: skip
CaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar="MLSM_CA_FILE",
        show_default=False,
        help="The CA of the controller's certificate (default: the system's).",
    ),
]
InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        envvar="MLSM_INSECURE",
        help="Send the token over plain HTTP to another machine.",
    ),
]


class GetFormat(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


def _kind(value: str) -> str:
    kind = _KIND_ALIASES.get(value.lower())
    if kind is None:
        raise UsageError(f"unknown kind '{value}'; use nodes, datasets or jobs")
    return kind


@app.command()
def get(
    kind: Annotated[
        str,
        typer.Argument(help="nodes, datasets, jobs, sweep (NAME), or sync.", show_default=False),
    ],
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="[NAME]...", show_default=False, help="Only these objects."),
    ] = None,
    output: Annotated[GetFormat, typer.Option("--output", "-o")] = GetFormat.table,
    selector: Annotated[
        str | None,
        typer.Option(
            "--selector", "-l", show_default=False, help="Label selector, e.g. gpu=a100,zone=b."
        ),
    ] = None,
    phase: Annotated[
        str | None, typer.Option(show_default=False, help="Jobs in these phases (comma-separated).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option(show_default=False, help="Jobs of one owner.")
    ] = None,
    deleted: Annotated[
        bool, typer.Option("--deleted", help="Include objects removed from git.")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """List objects from the controller, as `kubectl get` does; `get sync` shows
    where each source stands and the files it could not read."""  # fmt: skip
    client = Client(server, token, ca_file=ca_file, insecure=insecure)
    if kind.lower() in ("sync", "syncs"):
        _get_sync(client, output)
        return
    if kind.lower() in ("sweep", "sweeps"):
        _get_sweeps(client, names or [], output)
        return
    resolved = _kind(kind)
    if names:
        objects = [client.object(resolved, name) for name in names]
    else:
        params = {"selector": selector, "phase": phase, "owner": owner,
                  "deleted": "true" if deleted else None}  # fmt: skip
        objects = list(client.objects(resolved, **params))
    if output is GetFormat.json:
        typer.echo(json.dumps({"items": objects}, indent=2))
    elif output is GetFormat.yaml:
        typer.echo(manifests.dump_yaml({"items": objects}), nl=False)
    elif not objects:
        typer.echo(f"No {resolved} objects found.", err=True)
    else:
        typer.echo(views.table(resolved, objects, wide=output is GetFormat.wide))
    if output in (GetFormat.table, GetFormat.wide):
        _warn_broken_files(client)


def _get_sync(client: Client, output: GetFormat) -> None:
    states = client.get("/sync")["items"]
    if output is GetFormat.json:
        typer.echo(json.dumps({"items": states}, indent=2))
    elif output is GetFormat.yaml:
        typer.echo(manifests.dump_yaml({"items": states}), nl=False)
    else:
        typer.echo(views.sync_table(states))


def _get_sweeps(client: Client, names: list[str], output: GetFormat) -> None:
    """Each sweep's leaderboard: its children, best first."""
    if not names:
        raise UsageError("name the sweep: mlsmctl get sweep NAME (the job with spec.sweep)")
    boards = [client.get(f"/sweeps/{name}") for name in names]
    if output is GetFormat.json:
        typer.echo(json.dumps({"items": boards}, indent=2))
    elif output is GetFormat.yaml:
        typer.echo(manifests.dump_yaml({"items": boards}), nl=False)
    else:
        typer.echo("\n\n".join(views.sweep_table(board) for board in boards))


def _warn_broken_files(client: Client) -> None:
    """A researcher whose merged job is missing may be looking at why: a file of the
    source that could not be read names no object, so say so under the table."""
    broken = sum(s.get("brokenFiles", 0) for s in client.get("/sync")["items"])
    if broken:
        typer.echo(
            f"warning: {broken} file(s) in the source could not be read; their "
            "objects keep their last valid spec (mlsmctl get sync)",
            err=True,
        )


@app.command()
def describe(
    kind: Annotated[str, typer.Argument(help="node, dataset or job.", show_default=False)],
    name: Annotated[str, typer.Argument(show_default=False)],
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """Show one object: spec, status, conditions, the commit that last changed it, its
    runs and recent events."""
    client = Client(server, token, ca_file=ca_file, insecure=insecure)
    obj = client.object(_kind(kind), name)
    trainer = None
    if obj["kind"] == "TrainingJob" and (obj.get("spec") or {}).get("trainer") and obj.get("runs"):
        latest = _latest(obj["runs"])
        records = client.read(f"/runs/{latest['id']}/metrics", {})["records"]
        trainer = views.trainer_summary(obj["spec"]["trainer"], latest, records)
    typer.echo(views.describe(obj, trainer=trainer))


RunOption = Annotated[
    str | None,
    typer.Option("--run", show_default=False,
                 help="A run's id or its first characters (default: the latest run)."),
]  # fmt: skip


def _latest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest attempt's run; of a job on several nodes, the one hosting process
    rank 0 (which writes the metrics and checkpoints), else node rank 0's."""

    def order(r: dict[str, Any]) -> tuple[int, bool, int, str]:
        return (
            r["attempt"],
            0 in (r.get("ranks") or []),
            -(r.get("rank") or 0),
            r["createdAt"] or "",
        )

    best: dict[str, Any] = max(runs, key=order)
    return dict(best)


def _rank_run(name: str, runs: list[dict[str, Any]], rank: int) -> tuple[dict[str, Any], bool]:
    """The run of the latest attempt that holds process rank `rank`, and whether its
    log must be filtered to that rank (a run with several processes) or not (one
    process per node: rank is the node rank)."""
    attempt = max(r["attempt"] for r in runs)
    current = sorted((r for r in runs if r["attempt"] == attempt), key=lambda r: r.get("rank", 0))
    for candidate in current:
        if rank in (candidate.get("ranks") or []):
            return dict(candidate), True
    known = sorted(k for r in current for k in r.get("ranks") or [])
    if not known:
        for candidate in current:
            if int(candidate.get("rank") or 0) == rank:
                return dict(candidate), False
        raise UserError(
            f"job {name}'s attempt {attempt} has node ranks 0-{len(current) - 1}; no rank {rank}"
        )
    raise UserError(
        f"rank {rank} of job {name} has written no line yet; ranks seen so far: "
        f"{', '.join(map(str, known))}"
    )


def _job_runs(what: str, kind: str, name: str, client: Client) -> list[dict[str, Any]]:
    """For `mlsmctl logs|metrics job NAME`: the job's runs."""
    if _kind(kind) != "TrainingJob":
        raise UsageError(f"{what} belong to jobs: mlsmctl {what} job NAME")
    job = client.object("TrainingJob", name)
    runs: list[dict[str, Any]] = job.get("runs") or []
    if not runs:
        phase = job["status"].get("phase", "Pending")
        raise UserError(f"job {name} has not run yet (phase {phase}); "
                        f"`mlsmctl describe job {name}` says why")  # fmt: skip
    return runs


def _run_of(name: str, runs: list[dict[str, Any]], run: str | None) -> dict[str, Any]:
    """The job's run by id (or id prefix), or its latest."""
    if run is None:
        return _latest(runs)
    chosen = [r for r in runs if r["id"].startswith(run)]
    if len(chosen) != 1:
        known = ", ".join(r["id"][:8] for r in runs)
        raise UserError(f"job {name} has {'no' if not chosen else 'more than one'} run "
                        f"'{run}'; its runs: {known}")  # fmt: skip
    return dict(chosen[0])


@app.command()
def logs(
    kind: Annotated[str, typer.Argument(help="job.", show_default=False)],
    name: Annotated[str, typer.Argument(show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines "
                                         "until the run ends.")] = False,
    run: RunOption = None,
    tail: Annotated[int | None, typer.Option("--tail", show_default=False,
                                             help="Only the last N lines.")] = None,
    rank: Annotated[int | None, typer.Option("--rank", show_default=False, min=0,
                    help="One process of a distributed job (default: rank 0, and the "
                         "launcher's lines on its node).")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:  # fmt: skip
    """Print a job's output (stdout and stderr, as its agent shipped it), as
    `kubectl logs` does. Of a job under torchrun, one process's lines: rank 0's, or
    --rank K's; --run ID prints one run's (one node's) whole log."""
    client = Client(server, token, ca_file=ca_file, insecure=insecure)
    runs = _job_runs("logs", kind, name, client)
    if run is None:  # the latest attempt's run that holds that process rank
        chosen, filtered = _rank_run(name, runs, rank or 0)
    else:
        chosen, filtered = _run_of(name, runs, run), rank is not None
        if filtered and rank not in (chosen.get("ranks") or []):
            raise UserError(f"run {chosen['id'][:8]} holds no lines of rank {rank}")
    only: dict[str, Any] = {"rank": rank or 0} if filtered else {}
    path = f"/runs/{chosen['id']}/logs"
    after = -1
    if tail is not None:
        page = client.read(path, {"tail": max(tail, 0), **only})
        views.print_lines(page["lines"])
        after = page["next"]
    else:
        while True:
            page = client.read(path, {"after": after, "limit": 1000, **only})
            views.print_lines(page["lines"])
            after = page["next"]
            if len(page["lines"]) < 1000:
                break
    quiet = 0
    while follow:
        page = client.read(path, {"after": after, "limit": 1000, "wait": 10, **only}, timeout=40)
        views.print_lines(page["lines"])
        after = page["next"]
        if page["lines"]:
            quiet = 0
        elif page["finished"]:
            quiet += 1  # the run has ended: its last lines may still be on their way
            if quiet >= 2:
                break


@app.command()
def metrics(
    kind: Annotated[str, typer.Argument(help="job.", show_default=False)],
    name: Annotated[str, typer.Argument(show_default=False)],
    run: RunOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:  # fmt: skip
    """The last value of each metric per epoch, from the records the job wrote to
    $MLSM_METRICS_FILE."""
    client = Client(server, token, ca_file=ca_file, insecure=insecure)
    runs = _job_runs("metrics", kind, name, client)
    chosen = _run_of(name, runs, run)
    records = client.read(f"/runs/{chosen['id']}/metrics", {})["records"]
    if not records:
        typer.echo(f"run {chosen['id'][:8]} of job {name} has written no metrics yet.", err=True)
        return
    typer.echo(views.metrics_table(records))


@app.command()
def reproduce(
    kind: Annotated[str, typer.Argument(help="job.", show_default=False)],
    name: Annotated[str, typer.Argument(show_default=False)],
    run: RunOption = None,
    new_name: Annotated[
        str | None,
        typer.Option(
            "--name", show_default=False, help="The new job's name (default: NAME-repro)."
        ),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """Print the manifest that reruns a trainer job's run exactly: its spec as that run
    had it, with the seed, the image digest (or the trainer's package versions) and the
    dataset's checksum pinned, and the commit it came from. Commit it in a new pull
    request."""
    client = Client(server, token, ca_file=ca_file, insecure=insecure)
    runs = _job_runs("reproduce", kind, name, client)
    chosen = _run_of(name, runs, run)
    records = client.read(f"/runs/{chosen['id']}/metrics", {})["records"]
    made = scores.provenance_of(records)
    if made is None:
        raise UserError(
            f"run {chosen['id'][:8]} of job {name} recorded no provenance: the built-in "
            "trainer records it when it starts (a command job, or a run that has not "
            "started its trainer yet, has none)"
        )
    typer.echo(reproducing.reproduction(made, name=new_name or f"{name}-repro"), nl=False)


class PredictFormat(StrEnum):
    text = "text"
    json = "json"


@app.command()
def predict(
    kind: Annotated[str, typer.Argument(help="job.", show_default=False)],
    name: Annotated[str, typer.Argument(show_default=False)],
    images: Annotated[list[Path], typer.Argument(help="Image files.", show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100, help="Labels per image.")] = 3,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            show_default=False,
            help="A checkpoint folder on this machine (the controller is not asked).",
        ),
    ] = None,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote", help="Through the node's agent even when the checkpoint is on this machine."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, max=600, help="Seconds to wait for the labels.")
    ] = 120,
    output: Annotated[PredictFormat, typer.Option("--output", "-o")] = PredictFormat.text,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """The top-k labels for images from a trainer job's best checkpoint: read here when
    it is on this machine, else through the agent of the node that holds it."""
    if _kind(kind) != "TrainingJob":
        raise UsageError("predict reads a job's checkpoint: mlsmctl predict job NAME IMAGE...")
    if checkpoint is not None:
        found = predicting.predict_here(checkpoint, images, top_k=top_k, timeout=timeout)
    else:
        client = Client(server, token, ca_file=ca_file, insecure=insecure)
        found = predicting.predict_job(
            client, name, images, top_k=top_k, timeout=timeout, remote=remote
        )
    if output is PredictFormat.json:
        typer.echo(json.dumps(found.as_json(), indent=2))
    else:
        typer.echo(predicting.render(found), nl=False)


@app.command()
def diff(
    filename: Annotated[
        str,
        typer.Option(
            "--filename",
            "-f",
            show_default=False,
            help="A manifests directory (the whole branch) or file.",
        ),
    ],
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """What the controller would do if PATH were its branch: creates (+), field-level
    updates (~), deletes (-) and objects that would be invalid (!).

    Exit status as `kubectl diff`: 0 when nothing would change, 1 when something would.
    """  # fmt: skip
    if not Path(filename).exists():
        raise UsageError(f"{filename}: no such file or directory")
    plan, live, _problems = diffing.plan_against(
        Client(server, token, ca_file=ca_file, insecure=insecure), filename
    )
    for line in diffing.diff_lines(plan, live):
        typer.echo(line)
    if plan.held:
        typer.echo(f"held: {plan.held}")
    if not plan.actions:
        typer.echo("no changes", err=True)
        return
    raise typer.Exit(1)


class PlanFormat(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


@app.command()
def plan(
    base: Annotated[str | None, typer.Option("--base", show_default=False,
                    help="The pull request's base (a branch or commit).")] = None,
    head: Annotated[str, typer.Option("--head", help="Its head.")] = "HEAD",
    repo: Annotated[str, typer.Option("--repo", help="The manifests repository.")] = ".",
    path: Annotated[str, typer.Option("--path", help="The manifests' folder in it.")] = "",
    filename: Annotated[str | None, typer.Option("--filename", "-f", show_default=False,
                        help="Instead of --base: a manifests directory planned as the "
                        "branch against the controller (--server), which knows the "
                        "fleet's live state.")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    output: Annotated[PlanFormat, typer.Option("--output", "-o", help="text; markdown (a "
                      "pull-request comment); json.")] = PlanFormat.text,
    version: VersionOption = False,
) -> None:  # fmt: skip
    """What merging HEAD into BASE would do: objects created, changed (field by field,
    with the generation that bumps) and removed, every error at file:line:col, and
    for each new or changed job where it would run or why it would wait.

    With --base, from the repository alone: the plan says what it cannot know without
    the fleet's live state. With -f PATH, against the controller: live readiness and
    free GPUs, the real queue, and whose queued jobs each new job would delay.
    Exit status as `mlsmctl diff`: 0 no change, 1 changes, 2 errors.
    """
    if (base is None) == (filename is None):
        raise UsageError(
            "give --base REV (plan a pull request from the repository) or "
            "-f PATH (plan PATH against the controller), not both"
        )
    if filename is not None:
        if not Path(filename).exists():
            raise UsageError(f"{filename}: no such file or directory")
        found = merging.server_plan(
            Client(server, token, ca_file=ca_file, insecure=insecure), filename, owner=_author()
        )
    else:
        assert base is not None
        try:
            found = merging.merge_plan(repo, base, head, path)
        except manifests.SourceError as exc:
            raise UsageError(str(exc)) from exc
    typer.echo(merging.render(found, output.value), nl=False)
    if found.problems:
        raise typer.Exit(2)
    if found.changed:
        raise typer.Exit(1)


def _manifest_text(filename: str) -> str:
    """Every manifest under a file or directory, as one multi-document YAML text."""
    if filename == "-":
        return sys.stdin.read()
    try:
        files = manifests.discover([filename])
    except manifests.SourceError as exc:
        raise UsageError(str(exc)) from exc
    return "\n---\n".join(Path(f).read_text(encoding="utf-8") for f in files)


def _author() -> str:
    """The user as git knows them (user.name, user.email), else the login name."""
    import subprocess

    def config(key: str) -> str:
        done = subprocess.run(["git", "config", key], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    name = config("user.name") or os.environ.get("USER", "") or "mlsmctl"
    email = config("user.email")
    return f"{name} <{email}>" if email else name


def _write(filename: str, client: Client, *, delete: bool) -> None:
    body = {"manifests": _manifest_text(filename), "author": _author()}
    result = client.post("/delete" if delete else "/apply", body)
    verb = "deleted" if delete else "applied"
    where = f"commit {result['commit'][:10]}" if result["commit"] else "the source directory"
    for name, path in zip(result["objects"], result["files"], strict=True):
        typer.echo(f"{name} {verb} ({path}, {where})")


@app.command()
def apply(
    filename: Annotated[
        str,
        typer.Option(
            "--filename",
            "-f",
            show_default=False,
            help="A manifest file or directory ('-': standard input).",
        ),
    ],
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """Write manifests into the controller's local source, as a commit by you (for
    local testing; a controller following a remote branch refuses: open a pull
    request). Needs an admin token."""  # fmt: skip
    _write(filename, Client(server, token, ca_file=ca_file, insecure=insecure), delete=False)


@app.command()
def delete(
    filename: Annotated[
        str,
        typer.Option(
            "--filename",
            "-f",
            show_default=False,
            help="Manifests naming the objects to remove ('-': stdin).",
        ),
    ],
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    insecure: InsecureOption = False,
    version: VersionOption = False,
) -> None:
    """Remove objects' files from the controller's local source, as a commit by you.
    Needs an admin token."""  # fmt: skip
    _write(filename, Client(server, token, ca_file=ca_file, insecure=insecure), delete=True)


@app.command()
def up(
    repo: Annotated[Path, typer.Option("--repo", "-r", help="The manifests: a local git "
                                       "repository or a plain directory.")] = Path("manifests"),
    node: Annotated[str, typer.Option("--node", envvar="MLSM_NODE",
                                      help="This machine's Node name (nodes/NAME.yaml must "
                                      "declare it).")] = "local",
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Database, logs, token and "
                                            "the node's storage.")] = Path(".mlsm/up"),
    port: Annotated[int, typer.Option("--port", help="The controller's port on "
                                      "127.0.0.1.")] = 8470,
    follow: Annotated[str | None, typer.Option("--follow", show_default=False,
                                               help="Print this job's output as it "
                                               "runs.")] = None,
    gpus_file: Annotated[Path | None, typer.Option("--gpus-file", show_default=False,
                                                   help="Report these GPUs instead of "
                                                   "asking NVML or nvidia-smi.")] = None,
    version: VersionOption = False,
) -> None:  # fmt: skip
    """Run a whole installation on this machine: the controller (on SQLite) following
    REPO, and an agent for this machine's Node. Ctrl-C stops it; `up` again carries on."""
    from mlsm.cli.local import Installation, LocalSettings

    settings = LocalSettings(repo=repo, node=node, state_dir=state_dir, port=port,
                             follow=follow, gpus_file=gpus_file,
                             say=lambda line: typer.echo(line))  # fmt: skip
    installation = Installation(settings)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM and SIGHUP stop everything as Ctrl-C does

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        installation.up()
        installation.watch()
    except KeyboardInterrupt:
        typer.echo("\nstopping (Ctrl-C)")
    finally:
        installation.down()
    typer.echo(f"stopped. `mlsmctl up` again carries on from {state_dir}.")


def main(argv: list[str] | None = None) -> int:
    """Run mlsmctl and return its exit status; errors become messages, not tracebacks.

    Typer runs in standalone mode: it prints usage errors itself and exits 2.
    """
    try:
        app(args=argv, prog_name="mlsmctl")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UsageError as exc:
        typer.echo(f"mlsmctl: error: {exc}", err=True)
        return EXIT_USAGE
    except UserError as exc:
        typer.echo(f"mlsmctl: error: {exc}", err=True)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # `mlsmctl ... | head`: the reader left, nothing to report
    except Exception as exc:
        if os.environ.get("MLSM_DEBUG"):
            raise
        typer.echo(
            f"mlsmctl: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in mlsm; rerun with MLSM_DEBUG=1 for the traceback and report it.",
            err=True,
        )
        return EXIT_INTERNAL
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())

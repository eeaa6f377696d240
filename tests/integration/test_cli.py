"""The `sub` CLI as a user runs it: a real process against a real local supervisor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import Local
from tests.terminal import sub_on_terminal

pytestmark = pytest.mark.integration

MODEL = """\
apiVersion: substratus.ai/v1
kind: Model
metadata:
  name: {name}
spec:
  image:
    name: substratusai/base
  command: ["sh", "-c", "{script}"]
"""


def sub(
    *args: str, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "substratus.cli.main", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def apply_project(
    project: Path, files: dict[str, str], manifest: str, timeout: str = "120s"
) -> subprocess.CompletedProcess[str]:
    """A build context (``files``) and, beside it, its manifest; `sub apply --wait` that."""
    for name, text in files.items():
        write(project / name, text)
    path = write(project / "manifest.yaml", "apiVersion: substratus.ai/v1\n" + manifest)
    return sub("apply", "-f", str(path), "--wait", "--timeout", timeout)


def test_apply_get_describe_logs_wait_delete(local: Local, tmp_path: Path) -> None:
    docs = MODEL.format(name="a", script="echo hi from a; echo 1 > artifacts/x")
    docs += "---\n" + MODEL.format(name="b", script="echo 2 > artifacts/y")
    f = write(tmp_path / "models.yaml", docs)
    r = sub("apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["model/a created", "model/b created"]
    assert sub("apply", "-f", str(f)).stdout.splitlines() == [
        "model/a unchanged",
        "model/b unchanged",
    ]
    r = sub("wait", "model/a", "--for=ready", "--timeout=60s")
    assert r.returncode == 0, r.stderr
    assert sub("wait", "models", "b", "--timeout", "60s").returncode == 0

    table = sub("get", "models").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "PROGRESS", "SIZE", "AGE"]
    assert table[1].split()[:3] == ["a", "true", "Succeeded"]
    wide = sub("get", "ml", "-o", "wide").stdout
    assert "file://" in wide and "substratusai/base" in wide
    one = yaml.safe_load(sub("get", "model/a", "-o", "yaml").stdout)
    assert one["status"]["files"] == ["x"]
    listed = json.loads(sub("get", "models", "-o", "json").stdout)
    assert [o["metadata"]["name"] for o in listed] == ["a", "b"]
    assert "Conditions:" in sub("describe", "model/a").stdout
    assert sub("logs", "model/a").stdout == "hi from a\n"

    r = sub("delete", "-f", str(f))
    assert r.stdout.splitlines() == ["model/a deleted", "model/b deleted"]
    assert sub("get", "models").stderr.strip() == "No resources found in default namespace."


def test_apply_from_stdin_and_directory(local: Local, tmp_path: Path) -> None:
    r = sub("apply", "-f", "-", input=MODEL.format(name="s", script="true"))
    assert (r.returncode, r.stdout.strip()) == (0, "model/s created")
    write(tmp_path / "d" / "1.yaml", MODEL.format(name="d1", script="true"))
    write(tmp_path / "d" / "2.yml", MODEL.format(name="d2", script="true"))
    write(tmp_path / "d" / "notes.txt", "ignored")
    r = sub("apply", "-f", str(tmp_path / "d"), "--wait", "--timeout", "60s")
    assert r.returncode == 0, r.stderr
    assert "model/d2 ready" in r.stdout


def test_wait_fails_fast_when_the_job_fails(local: Local) -> None:
    sub("apply", "-f", "-", input=MODEL.format(name="bad", script="echo broken; exit 7"))
    r = sub("wait", "model/bad", "--timeout", "60s")
    assert r.returncode == 1
    assert "JobFailed" in r.stderr and "exit code 7" in r.stderr and "broken" in r.stderr


def test_wait_times_out_and_not_found(local: Local) -> None:
    sub("apply", "-f", "-", input=MODEL.format(name="slow", script="sleep 30"))
    assert sub("wait", "model/slow", "--timeout", "1s").returncode == 5
    r = sub("wait", "model/nope", "--timeout", "1s")
    assert r.returncode == 3 and "not found" in r.stderr
    assert sub("get", "model/nope").returncode == 3


BAD = [
    ("kind: Model\nmetadata: {name: x\n", "malformed YAML (line"),
    (
        "apiVersion: substratus.ai/v1\nkind: Modle\nmetadata: {name: x}\nspec: {}\n",
        "kind: unknown kind 'Modle'",
    ),
    (
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: x}\n"
        "spec: {image: {name: i}, imag: 1}\n",
        "spec.imag: unknown field",
    ),
    (
        "apiVersion: substratus.ai/v1\nkind: Server\nmetadata: {name: x}\n"
        "spec: {image: {name: i}, model: m, replicas: many}\n",
        "spec.replicas:",
    ),
    (
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: x}\n"
        "spec: {image: {name: i}, params: {bad-key: 1}}\n",
        "params key 'bad-key'",
    ),
    (
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: x}\n"
        "spec: {image: {name: i}, baseModel: {name: x}}\n",
        "spec.baseModel: an object cannot reference itself",
    ),
    (
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: Bad_Name}\n"
        "spec: {image: {name: i}}\n",
        "metadata.name:",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_input_is_rejected_with_field_and_reason(
    local: Local, text: str, expected: str
) -> None:
    r = sub("apply", "-f", "-", input=text)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert expected in r.stderr
    assert r.stdout == ""


def test_rejected_update_and_cycle_leave_existing_objects_intact(local: Local) -> None:
    good = MODEL.format(name="keep", script="echo 1 > artifacts/x")
    sub("apply", "-f", "-", input=good)
    before = local.wait("Model", "keep")
    bad = good.replace("command:", "commandd:")
    assert sub("apply", "-f", "-", input=bad).returncode == 4
    a = (
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: a}\n"
        "spec: {image: {name: substratusai/base}, command: [x], baseModel: {name: b}}\n"
    )
    b = a.replace("name: a}", "name: b}").replace("{name: b}}", "{name: a}}")
    assert sub("apply", "-f", "-", input=a).returncode == 0
    r = sub("apply", "-f", "-", input=b)
    assert r.returncode == 4 and "reference cycle: Model/b -> Model/a -> Model/b" in r.stderr
    after = local.get("Model", "keep")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["status"]["url"] == before["status"]["url"]
    assert Path(after["status"]["url"].removeprefix("file://"), "x").exists()


def test_one_bad_document_applies_nothing(local: Local) -> None:
    docs = MODEL.format(name="first", script="true") + "---\nkind: Nope\n"
    assert sub("apply", "-f", "-", input=docs).returncode == 4
    assert local.client.list_objects("Model", None) == []


def test_crds_and_help(local: Local) -> None:
    docs = list(yaml.safe_load_all(sub("crds").stdout))
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {c["spec"]["names"]["kind"] for c in crds} == {"Model", "Dataset", "Notebook", "Server"}
    assert {d["kind"] for d in docs} - {"CustomResourceDefinition"} == {
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    help_text = sub("apply", "--help").stdout
    assert "Examples" in help_text and "sub apply -f" in help_text


def test_local_status_and_stop(local: Local) -> None:
    sub("apply", "-f", "-", input=MODEL.format(name="x", script="true"))
    r = sub("local", "status")
    assert r.returncode == 0 and "running" in r.stdout and str(local.paths.home) in r.stdout
    assert sub("local", "stop").returncode == 0
    r = sub("local", "status")
    assert r.returncode == 6 and "not running" in r.stdout


def test_apply_from_a_url_and_follow_logs(local: Local, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    script = "sleep 1; for i in 1 2 3; do echo line $i; sleep 0.5; done"
    write(tmp_path / "web" / "m.yaml", MODEL.format(name="web", script=script))
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "web")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/m.yaml"
        missing = sub("apply", "-f", url.replace("m.yaml", "nope.yaml"))
        assert missing.returncode == 4 and "cannot fetch manifest" in missing.stderr
        r = sub("apply", "-f", url)
        assert (r.returncode, r.stdout.strip()) == (0, "model/web created"), r.stderr
    finally:
        server.shutdown()
    local.wait_reason("Model", "web", "JobRunning")
    r = sub("logs", "model/web", "-f")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    assert sub("logs", "model/web", "--tail", "1").stdout == "line 3\n"


def test_usage_errors_exit_2(local: Local) -> None:
    assert sub("get", "models", "-o", "xml").returncode == 2
    assert sub("logs", "models").returncode == 2
    r = sub("get", "gizmos")
    assert r.returncode == 2 and "unknown kind 'gizmos'" in r.stderr


LABELLED = """\
apiVersion: substratus.ai/v1
kind: Model
metadata:
  name: {name}
  labels: {{team: {team}}}
spec:
  image: {{name: substratusai/base}}
  command: ["sh", "-c", "echo {name} > artifacts/x"]
"""


def test_selectors_output_formats_and_watch(local: Local, tmp_path: Path) -> None:
    docs = "---\n".join(LABELLED.format(name=n, team=t) for n, t in [("a", "nlp"), ("b", "cv")])
    assert sub("apply", "-f", "-", "--wait", input=docs).returncode == 0
    r = sub("get", "models", "-l", "team=nlp", "-o", "name")
    assert (r.returncode, r.stdout) == (0, "model.substratus.ai/a\n"), r.stderr
    # What -o name prints, the other verbs take.
    r = sub("wait", r.stdout.strip(), "--timeout", "10s")
    assert r.returncode == 0 and "condition met" in r.stdout, r.stderr
    r = sub(
        "get",
        "models",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}:{.status.ready}{'\\n'}{end}",
    )
    assert r.stdout == "a:true\nb:true\n", r.stderr
    r = sub("get", "model/b", "-o", "custom-columns=NAME:.metadata.name,TEAM:.metadata.labels.team")
    assert r.stdout.split() == ["NAME", "TEAM", "b", "cv"], r.stderr
    r = sub("wait", "models", "-l", "team in (nlp,cv)", "--timeout", "10s")
    assert r.stdout.splitlines() == ["model/a condition met", "model/b condition met"], r.stderr
    r = sub("get", "models", "-o", "jsonpath={.a")
    assert r.returncode == 2 and "--output" in r.stderr

    # get -w: the objects now, then a change as a row of its own.
    watcher = subprocess.Popen(
        [sys.executable, "-m", "substratus.cli.main", "get", "models", "-w", "-l", "team=nlp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split()[:2] == ["NAME", "READY"]
        assert watcher.stdout.readline().split()[:3] == ["a", "true", "Succeeded"]
        changed = LABELLED.format(name="a", team="nlp").replace("echo a", "sleep 30; echo a")
        assert sub("apply", "-f", "-", input=changed).returncode == 0
        rows = []
        while not rows or rows[-1][1] != "false":  # the new generation, then its job starting
            rows.append(watcher.stdout.readline().split())
            assert len(rows) < 6 and rows[-1][0] == "a", rows
    finally:
        watcher.terminate()
        watcher.wait(10)

    r = sub("version")
    assert (
        r.stdout.startswith("Client Version: substratus ")
        and "Server Version: local supervisor" in r.stdout
    )
    r = sub("explain", "model.spec.image.git")
    assert (
        r.returncode == 0
        and "FIELD: git <Object>" in r.stdout
        and "url\t<string> -required-" in r.stdout
    )

    r = sub("delete", "models", "-l", "team=cv")
    assert r.stdout == "model/b deleted\n", r.stderr
    assert sub("get", "models", "-o", "name").stdout == "model.substratus.ai/a\n"


def test_dry_runs_and_diff_change_nothing(local: Local, tmp_path: Path) -> None:
    first = LABELLED.format(name="a", team="nlp")
    path = write(tmp_path / "a.yaml", first)
    for mode in ("client", "server"):
        r = sub("apply", "-f", str(path), f"--dry-run={mode}")
        label = "(dry run)" if mode == "client" else "(server dry run)"
        assert (r.returncode, r.stdout) == (0, f"model/a created {label}\n"), r.stderr
    assert sub("get", "models", "-o", "name").stdout == ""  # nothing was stored
    # The runtime's own checks run in a server dry run: a cycle is refused, naming the field.
    cycle = LABELLED.format(name="c", team="x") + "  baseModel: {name: c}\n"
    r = sub("apply", "-f", "-", "--dry-run=server", input=cycle)
    assert r.returncode == 4 and "baseModel" in r.stderr, r.stderr
    r = sub("diff", "-f", str(path))
    assert r.returncode == 1 and "+++ MERGED/model.default.a" in r.stdout, r.stderr
    assert "+  labels:\n+    team: nlp" in r.stdout
    assert sub("apply", "-f", str(path), "--wait").returncode == 0
    assert sub("diff", "-f", str(path)).returncode == 0  # applied: nothing to show
    write(path, first.replace("team: nlp", "team: cv"))
    r = sub("diff", "-f", str(path))
    assert r.returncode == 1 and "-    team: nlp\n+    team: cv" in r.stdout, r.stdout
    r = sub("apply", "-f", str(path), "--dry-run=server")
    assert r.stdout == "model/a configured (server dry run)\n"
    assert sub("get", "model/a", "-o", "jsonpath={.metadata.labels.team}").stdout == "nlp"
    r = sub("apply", "-f", str(path), "--dry-run=maybe")
    assert r.returncode == 2 and "--dry-run" in r.stderr


def bash_completes(line: str, script: Path, want: list[str], timeout: float = 30) -> str:
    """What an interactive bash on a pty shows after ``line`` and TABs, with ``script`` (sub's
    completion) sourced, as a user's shell would have it; returns once every string of
    ``want`` is on the screen, or at the timeout."""
    import pty
    import select
    import signal
    import time

    env = dict(os.environ, PS1="$ ", TERM="dumb", INPUTRC="/dev/null")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive bash without the machine's start-up files
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    seen = b""
    try:
        os.write(fd, f"source {script}\n{line}".encode())
        deadline = time.monotonic() + timeout
        tabs = 0
        while time.monotonic() < deadline and not all(w.encode() in seen for w in want):
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                seen += os.read(fd, 4096)
            elif tabs < 4:  # first TAB: the common part; more: the list of choices
                os.write(fd, b"\t")
                tabs += 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return seen.decode(errors="replace")


def test_completion_of_kinds_and_names_in_a_real_bash(local: Local, tmp_path: Path) -> None:
    docs = "---\n".join(LABELLED.format(name=n, team="t") for n in ("alpha", "beta"))
    assert sub("apply", "-f", "-", input=docs).returncode == 0
    script = tmp_path / "sub-completion.bash"
    sub_path = str(Path(sys.executable).parent / "sub")
    source = {**os.environ, "_SUB_COMPLETE": "source_bash"}
    script.write_text(subprocess.run([sub_path], env=source, capture_output=True, text=True).stdout)
    assert "complete -o default -F _sub_completion sub" in script.read_text()
    names = bash_completes("sub get model/", script, ["model/alpha", "model/beta"])
    assert "model/alpha" in names and "model/beta" in names, names
    kinds = bash_completes("sub describe data", script, ["dataset", "datasets"])
    assert "dataset" in kinds and "datasets" in kinds, kinds
    after_kind = bash_completes("sub delete models al", script, ["alpha"])
    assert "alpha" in after_kind, after_kind

    # zsh and fish (not installed here) ask the same program through their own protocol.
    for shell, extra in (("zsh", {}), ("fish", {"_TYPER_COMPLETE_FISH_ACTION": "get-args"})):
        env = {**os.environ, "_SUB_COMPLETE": f"complete_{shell}", **extra}
        env["_TYPER_COMPLETE_ARGS"] = "sub get model/"
        said = subprocess.run([sub_path], env=env, capture_output=True, text=True).stdout
        assert "model/alpha" in said and "model/beta" in said, (shell, said)


def test_open_prints_urls_that_work_as_they_are(local: Local, tmp_path: Path) -> None:
    import urllib.request

    # A notebook whose "Jupyter" answers /api, and /lab only with its token.
    lab = (
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        lab = '/lab?token=' + os.environ['NOTEBOOK_TOKEN']\n"
        "        self.send_response(200 if self.path in ('/api', lab) else 403)\n"
        "        self.end_headers()\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    )
    write(tmp_path / "lab.py", lab)
    spec = {"image": "substratusai/base", "command": ["python", str(tmp_path / "lab.py")]}
    local.apply("Notebook", "nb", spec)
    token = local.wait("Notebook", "nb")["status"]["token"]
    r = sub("open", "notebook/nb", "--no-browser")
    assert r.returncode == 0 and r.stdout.strip().endswith(f"/lab?token={token}"), r.stderr
    with urllib.request.urlopen(r.stdout.strip(), timeout=10) as page:
        assert page.status == 200
    r = sub("open", "model/x", "--no-browser")
    assert r.returncode == 2 and "notebook/NAME or server/NAME" in r.stderr


def test_a_jobs_progress_reaches_status_get_and_describe(local: Local, tmp_path: Path) -> None:
    import time

    report = '{"percent": 50, "step": 5, "total": 10, "etaSeconds": 60, "metrics": {"loss": 0.5}}'
    go = tmp_path / "go"
    job = write(
        tmp_path / "job.sh",
        f"printf '%s' '{report}' > progress.tmp && mv progress.tmp progress.json\n"
        f"while [ ! -e {go} ]; do sleep 0.1; done\necho w > artifacts/w\n",
    )
    local.apply("Model", "p", {"image": "substratusai/base", "command": ["sh", str(job)]})
    deadline = time.monotonic() + 30
    while "50% eta 1m00s loss 0.5" not in (listed := sub("get", "models")).stdout:
        assert time.monotonic() < deadline, listed.stdout + listed.stderr
        time.sleep(0.3)
    assert listed.stdout.split("\\n")[0].split()[:4] == ["NAME", "READY", "STATUS", "PROGRESS"]
    status = local.get("Model", "p")["status"]
    assert status["progress"]["step"] == 5 and status["ready"] is False
    described = sub("describe", "model/p").stdout
    assert "progress:   50% 5/10 eta 1m00s loss 0.5" in described
    go.touch()
    done = local.wait("Model", "p")
    assert done["status"]["progress"]["metrics"] == {"loss": 0.5}  # its last word stays


def test_events_and_describe_say_what_happened(local: Local, tmp_path: Path) -> None:
    assert (
        sub("apply", "-f", "-", "--wait", input=LABELLED.format(name="e", team="t")).returncode == 0
    )
    local.apply(
        "Server", "lost", {"image": "substratusai/base", "command": ["true"], "model": "nope"}
    )
    local.wait_reason("Server", "lost", "ModelNotFound")
    r = sub("events")
    header = ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert r.stdout.splitlines()[0].split() == header, r.stdout
    assert any(
        "Normal" in line and "Succeeded" in line and "model/e" in line
        for line in r.stdout.splitlines()
    )
    warned = [line for line in r.stdout.splitlines() if "server/lost" in line]
    assert warned and "Warning" in warned[-1] and "ModelNotFound" in warned[-1], r.stdout
    own = sub("events", "model/e").stdout
    assert "server/lost" not in own and "Succeeded" in own
    described = sub("describe", "model/e").stdout
    assert "\nEvents:\n  LAST SEEN" in described and "Succeeded" in described.split("Events:")[1]


def test_logs_follow_draws_progress_lines_as_bars_on_a_terminal(
    local: Local, tmp_path: Path
) -> None:
    job = write(
        tmp_path / "job.py",
        "import time\n"
        "print('fetching the weights', flush=True)\n"
        "for mb in (10, 40, 80):\n"
        "    print(f'weights.bin: {mb}.0 MB of 80.0 MB (20.0 MB/s) …', flush=True)\n"
        "    time.sleep(0.5)\n"
        "print('weights.bin: 80.0 MB of 80.0 MB (20.0 MB/s) done', flush=True)\n"
        "time.sleep(1)\n"
        "open('artifacts/w', 'w').write('w')\n",
    )
    local.apply("Model", "bar", {"image": "substratusai/base", "command": ["python", str(job)]})
    _, screen = sub_on_terminal("logs", "-f", "model/bar", timeout=60)
    assert "fetching the weights" in screen
    assert "━" in screen and "100.0%" in screen and "80 of 80 MB" in screen, screen
    assert "weights.bin: 40.0 MB of 80.0 MB" not in screen  # drawn, not printed
    # Piped, the same log is the log as written.
    assert "weights.bin: 40.0 MB of 80.0 MB (20.0 MB/s) …" in sub("logs", "model/bar").stdout


def test_logs_follow_waits_for_a_workload_that_has_not_started(local: Local) -> None:
    """As `kubectl logs -f` waits for a container: a fine-tune whose base model is not there
    yet has no run; following its logs waits for one, then streams it."""
    tuned = {
        "image": "substratusai/base",
        "baseModel": {"name": "later"},
        "command": ["sh", "-c", "echo tuned-output && echo w > artifacts/w"],
    }
    local.apply("Model", "tuned", tuned)
    follower = subprocess.Popen(
        [sys.executable, "-m", "substratus.cli.main", "logs", "-f", "model/tuned"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)
        assert follower.poll() is None  # still waiting: nothing has run
        base = {"image": "substratusai/base", "command": ["sh", "-c", "echo w > artifacts/w"]}
        local.apply("Model", "later", base)
        stdout, stderr = follower.communicate(timeout=90)
    finally:
        follower.kill()
    assert follower.returncode == 0, stderr
    assert stdout == "tuned-output\n"

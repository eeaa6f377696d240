"""`sub get`: tables, -o formats (wide, yaml, json, name, jsonpath, custom-columns), label
selectors and watching, against either runtime through the Client interface."""

from __future__ import annotations

from typing import Any

from substratus.cli.common import EXIT_USAGE, client, echo, fail, guarded


def get(
    target: list[str] | None,
    namespace: str | None,
    all_namespaces: bool,
    output: str | None,
    selector: str | None,
    watch: bool,
) -> None:
    """`sub get` (the typer command, with its help, is in ``app.py``)."""
    from substratus.cli import output as fmt
    from substratus.cli.selectors import SelectorError, parse_selector
    from substratus.cli.targets import parse_target

    try:
        fmt.check_output(output)
        matches = parse_selector(selector)
    except (ValueError, SelectorError) as exc:
        fail(str(exc), EXIT_USAGE)

    def run() -> None:
        args = list(target or [])
        if args and args[0].lower() in ("secret", "secrets"):
            items = client().secrets(None if all_namespaces else namespace or "default")
            for s in items:
                echo(f"{s['metadata']['name']}   keys: {', '.join(s['keys'])}")
            return
        kinds, name = parse_target(args)
        ns = None if all_namespaces else (namespace or "default")
        c = client()
        if watch:
            _watch(c, kinds, ns, name, output, matches, all_namespaces)
            return
        if name:
            objs: list[dict[str, Any]] = [c.get(kinds[0], ns or "default", name)]
        else:
            objs = [o for k in kinds for o in c.list_objects(k, ns) if matches(o)]
        if not objs and not (output in ("yaml", "json") or (output or "").startswith("jsonpath")):
            echo(f"No resources found{f' in {ns} namespace' if ns else ''}.", stderr=True)
            return
        text = fmt.render(objs, output, single=bool(name), all_namespaces=all_namespaces)
        echo(text, end=_end(output))

    guarded(run)


def _watch(
    c: Any,
    kinds: list[str],
    ns: str | None,
    name: str | None,
    output: str | None,
    matches: Any,
    all_namespaces: bool,
) -> None:
    """The objects now, then each change, until interrupted: kubectl's `get -w`. A watch that
    ends (a timeout, a reconnect) starts again; what was printed is not printed twice."""
    from substratus.cli import output as fmt
    from substratus.cli.targets import UsageError

    if len(kinds) != 1:
        raise UsageError("--watch needs one kind, e.g. sub get models -w")
    seen: dict[tuple[str, str], str] = {}  # object -> the resourceVersion printed
    header = True
    while True:
        for event in c.watch(kinds[0], ns, name):
            if event["type"] == "BOOKMARK":
                continue
            obj = event["object"]
            meta = obj["metadata"]
            ident = (meta["namespace"], meta["name"])
            version = "DELETED" if event["type"] == "DELETED" else str(meta.get("resourceVersion"))
            if not matches(obj) or seen.get(ident) == version:
                continue
            seen[ident] = version
            if output == "yaml":
                echo("---")
            text = fmt.render([obj], output, single=True, all_namespaces=all_namespaces,
                              header=header)  # fmt: skip
            header = False
            echo(text, end=_end(output))


def _end(output: str | None) -> str:
    """A JSONPath template says where its lines end; kubectl adds no newline to it."""
    return "" if (output or "").startswith("jsonpath=") else "\n"

"""kubectl-like tables and describe output."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from substratus.api.kindnames import GROUP, kind_names

if TYPE_CHECKING:
    from substratus.cli import jsonpath

FORMATS = ("wide", "yaml", "json", "name", "jsonpath=TEMPLATE", "custom-columns=NAME:PATH,...")


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    # fromisoformat, not strptime: the _strptime module is a few ms of every `sub get`.
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(UTC)
    secs = int(((now or datetime.now(UTC)) - then).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "Ready"), {})


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """``values`` as one line of block characters, low to high, at most ``width`` wide."""
    if not values:
        return ""
    if len(values) > width:  # the mean of each of ``width`` spans
        span = len(values) / width
        values = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := values[int(i * span) : max(int((i + 1) * span), int(i * span) + 1)])
        ]
    low, high = min(values), max(values)
    scale = (len(BLOCKS) - 1) / (high - low) if high > low else 0
    return "".join(BLOCKS[round((v - low) * scale)] for v in values)


def progress_text(status: dict[str, Any], full: bool = False) -> str:
    """A job's ``status.progress`` in a few words: ``42% 420/1000 eta 1m35s loss 1.73``."""
    p = status.get("progress") or {}
    parts = []
    if p.get("percent") is not None:
        parts.append(f"{p['percent']:g}%")
    if full and p.get("step") is not None:
        parts.append(f"{p['step']}/{p['total']}" if p.get("total") else str(p["step"]))
    if p.get("etaSeconds") is not None and not status.get("ready"):
        parts.append(f"eta {duration(p['etaSeconds'])}")
    for name, value in (p.get("metrics") or {}).items():
        if full or name == "loss":
            parts.append(f"{name} {value:.4g}")
    if full and p.get("message"):
        parts.append(f"({p['message']})")
    return " ".join(parts)


def _columns(obj: dict[str, Any], wide: bool) -> list[tuple[str, str]]:
    status = obj.get("status") or {}
    names = kind_names(obj["kind"])
    cond = ready_condition(obj)
    cols = [
        ("READY", "true" if status.get("ready") else "false"),
        ("STATUS", cond.get("reason") or "Pending"),
    ]
    if names.has_artifacts:
        cols.append(("PROGRESS", progress_text(status) or "-"))
        cols.append(("SIZE", status.get("diskSize") or ""))
    if obj["kind"] == "Server":
        cols.append(("REPLICAS", f"{status.get('replicas', 0)}/{obj['spec'].get('replicas', 1)}"))
    cols.append(("AGE", age(obj["metadata"].get("creationTimestamp"))))
    if wide:
        cols.append(("URL", status.get("url") or ""))
        written = obj["spec"].get("image")  # a name, or {name, git, upload}, as written
        image = status.get("image") or (
            written if isinstance(written, str) else (written or {}).get("name")
        )
        cols.append(("IMAGE", image or ""))
    return cols


def table(objs: list[dict[str, Any]], wide: bool = False, all_namespaces: bool = False) -> str:
    """One table per kind, as kubectl prints `get` of several kinds."""
    blocks = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    for kind, items in by_kind.items():
        prefix = f"{kind_names(kind).plural}/" if len(by_kind) > 1 else ""
        rows = []
        for obj in items:
            meta = obj["metadata"]
            row = [meta["namespace"]] if all_namespaces else []
            row.append(prefix + meta["name"])
            row += [v for _, v in _columns(obj, wide)]
            rows.append(row)
        header = (["NAMESPACE"] if all_namespaces else []) + ["NAME"]
        header += [h for h, _ in _columns(items[0], wide)]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def dump(objs: list[dict[str, Any]] | dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(objs, indent=2)
    if isinstance(objs, list):
        objs = {"apiVersion": "v1", "kind": "List", "items": objs}
    import yaml  # only where YAML is printed: it is a start-up cost of every command

    return yaml.safe_dump(objs, sort_keys=False)


def describe(obj: dict[str, Any]) -> str:
    meta, status = obj["metadata"], obj.get("status") or {}
    lines = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta['namespace']}",
        f"Kind:         {obj['kind']}",
        f"Generation:   {meta.get('generation')} (observed {status.get('observedGeneration')})",
        f"Created:      {meta.get('creationTimestamp')}",
    ]
    for label in ("labels", "annotations"):
        if meta.get(label):
            pairs = ", ".join(f"{k}={v}" for k, v in meta[label].items())
            lines.append(f"{label.capitalize() + ':':<14}{pairs}")
    lines.append("Spec:")
    import yaml

    spec_yaml = yaml.safe_dump(obj.get("spec") or {}, sort_keys=False).rstrip()
    lines += ["  " + line for line in spec_yaml.splitlines()]
    lines.append("Status:")
    lines.append(f"  Ready:      {bool(status.get('ready'))}")
    for key in ("url", "diskSize", "image", "uploadUrl", "replicas"):
        if status.get(key) not in (None, ""):
            lines.append(f"  {key + ':':<12}{status[key]}")
    if status.get("files"):
        lines.append(f"  files:      {len(status['files'])}")
        lines += [f"    {f}" for f in status["files"][:20]]
        if len(status["files"]) > 20:
            lines.append(f"    ... and {len(status['files']) - 20} more")
    if status.get("progress"):
        lines.append(f"  progress:   {progress_text(status, full=True)}")
        if status["progress"].get("updated"):
            lines.append(f"              reported {age(status['progress']['updated'])} ago")
        history = status["progress"].get("history") or []
        if len(history) > 1:
            lines.append(
                f"  curve:      {sparkline(history)}  {history[0]:.4g} -> {history[-1]:.4g}"
            )
    if "loss.png" in (status.get("files") or []) and status.get("url"):
        lines.append(f"  loss.png:   {str(status['url']).rstrip('/')}/loss.png")
    if status.get("token"):
        lines.append("  token:      (set; `sub get notebook NAME -o json` shows it)")
    lines.append("Conditions:")
    conds = status.get("conditions") or []
    if not conds:
        lines.append("  <none>")
    for c in conds:
        lines.append(
            f"  {c['type']:<13}{c['status']:<8}{c.get('reason', ''):<20}"
            f"{age(c.get('lastTransitionTime'))} ago"
        )
        for mline in (c.get("message") or "").splitlines():
            lines.append(f"      {mline}")
    return "\n".join(lines)


def check_output(output: str | None) -> None:
    """ValueError naming --output when ``output`` is not a format (or its template is bad)."""
    if output is None or output in ("wide", "yaml", "json", "name"):
        return
    from substratus.cli import jsonpath  # its parser is for these formats only

    kind, _, arg = output.partition("=")
    try:
        if kind == "jsonpath" and arg:
            jsonpath.parse(arg)
            return
        if kind == "custom-columns" and arg:
            _columns_spec(arg)
            return
    except jsonpath.JSONPathError as exc:
        raise ValueError(f"--output: {exc}") from None
    raise ValueError(f"--output: {output!r} is not one of {', '.join(FORMATS)}")


def name(obj: dict[str, Any]) -> str:
    """``model.substratus.ai/NAME``, as ``kubectl get -o name`` writes it."""
    return f"{obj['kind'].lower()}.{GROUP}/{obj['metadata']['name']}"


def _columns_spec(spec: str) -> list[tuple[str, jsonpath.Expr]]:
    from substratus.cli import jsonpath

    columns = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep or not header or not path:
            raise jsonpath.JSONPathError(f"custom-columns: expected NAME:PATH, got {part!r}")
        path = path.strip()
        if path.startswith("{") and path.endswith("}"):
            path = path[1:-1]
        columns.append((header, jsonpath.parse_expr(path)))
    return columns


def custom_columns(objs: list[dict[str, Any]], spec: str, header: bool = True) -> str:
    from substratus.cli import jsonpath

    columns = _columns_spec(spec)
    rows = [[h for h, _ in columns]] if header else []
    for obj in objs:
        rows.append(
            [
                ",".join(jsonpath.text(v) for v in jsonpath.find(e, obj)) or "<none>"
                for _, e in columns
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))] if rows else []
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def render(
    objs: list[dict[str, Any]],
    output: str | None,
    single: bool,
    all_namespaces: bool = False,
    header: bool = True,
) -> str:
    """``objs`` as ``get -o output`` prints them (``single``: one object was asked for)."""
    if output in ("yaml", "json"):
        return dump(objs[0] if single else objs, output)
    if output == "name":
        return "\n".join(name(o) for o in objs)
    if output and output.startswith("jsonpath="):
        from substratus.cli import jsonpath

        data: Any = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": objs}
        return jsonpath.render(jsonpath.parse(output.partition("=")[2]), data)
    if output and output.startswith("custom-columns="):
        return custom_columns(objs, output.partition("=")[2], header)
    text = table(objs, wide=output == "wide", all_namespaces=all_namespaces)
    return text if header else "\n".join(text.splitlines()[1:])

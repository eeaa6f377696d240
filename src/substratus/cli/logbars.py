"""`sub logs -f` on a terminal: the workloads' progress lines (workloads/contract.py Progress:
``WHAT: 12.5 MB of 100.0 MB (3.1 MB/s) …``) drawn as live bars, every other line printed as it
is above them. Piped or redirected, the log is passed through unchanged."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

LINE = re.compile(
    r"^(?P<what>.{1,200}?): (?P<done>\d+(?:\.\d+)?) (?P<unit>MB|[A-Za-z]+)"
    r"(?: of (?P<total>\d+(?:\.\d+)?)(?: MB)?)? \((?P<rate>[^)]*)\) (?P<state>…|done)$"
)


def parse(line: str) -> dict[str, Any] | None:
    m = LINE.match(line.strip())
    if not m:
        return None
    found = m.groupdict()
    return {
        "what": found["what"],
        "done": float(found["done"]),
        "total": float(found["total"]) if found["total"] else None,
        "unit": found["unit"],
        "rate": found["rate"],
        "finished": found["state"] == "done",
    }


def render(chunks: Iterable[bytes], console: Console) -> None:
    """Print ``chunks`` (a log stream) on ``console``, progress lines as bars."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[amount]}"),
        TextColumn("{task.fields[rate]}"),
        console=console,
    )
    tasks: dict[str, TaskID] = {}
    pending = b""
    with progress:
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                found = parse(line)
                if found is None:
                    progress.console.print(line, markup=False, highlight=False)
                    continue
                unit = found["unit"]
                total = found["total"]
                amount = f"{found['done']:g}{' of ' + format(total, 'g') if total else ''} {unit}"
                if found["what"] not in tasks:
                    tasks[found["what"]] = progress.add_task(
                        found["what"], total=total, amount=amount, rate=found["rate"]
                    )
                task = tasks[found["what"]]
                done = total if found["finished"] and total else found["done"]
                progress.update(
                    task, completed=done, total=total, amount=amount, rate=found["rate"]
                )
        if pending:
            progress.console.print(
                pending.decode("utf-8", "replace"), markup=False, highlight=False
            )

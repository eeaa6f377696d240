"""`sub apply`: documents to the runtime, uploads of build contexts, dry runs and --wait.

Without an upload, a dry run or several documents, nothing here imports pydantic or rich: the
runtime checks the one document (the running local supervisor with the same models; the API
server with the CRD schema and admission policy made from them, and a refusal is worded by
our own check, as the manifest has it)."""

from __future__ import annotations

from pathlib import Path

from substratus.cli.common import (
    EXIT_USAGE,
    client,
    echo,
    err,
    fail,
    guarded,
    parse_duration,
    runtime_answers,
)


def apply(
    filename: list[str],
    namespace: str | None,
    recursive: bool,
    upload_dir: str | None,
    wait: bool,
    timeout: str,
    follow_build: bool,
    dry_run: str,
) -> None:
    from substratus.cli.manifests import needs_upload, read_documents

    if dry_run not in ("none", "client", "server"):
        fail(f"--dry-run: {dry_run!r} is not one of none, client, server", EXIT_USAGE)

    def run() -> None:
        docs = read_documents(filename, namespace, recursive)
        uploads = any(needs_upload(doc.body) for doc in docs)
        if len(docs) > 1 or uploads or dry_run != "none" or not runtime_answers():
            from substratus.api.loading import parse_object

            # Every document checked before any is applied: one bad document applies nothing
            # (and a bad one does not start the local supervisor).
            for doc in docs:
                if not (doc.body.get("kind") == "Secret" and doc.body.get("apiVersion") == "v1"):
                    parse_object(doc.body, doc.source)
        if dry_run != "none":
            from substratus.cli.diff import dry_run_apply

            dry_run_apply(docs, dry_run == "server")
            return
        tarballs: list[Path | None] = [None] * len(docs)
        if uploads:
            from substratus.cli.upload import prepare_upload

            tarballs = [prepare_upload(doc, upload_dir) for doc in docs]
        c = client(start=True)
        applied = []
        for doc, tarball in zip(docs, tarballs, strict=True):
            result = c.apply(doc.body, doc.source)
            obj = result.object
            echo(f"{obj['kind'].lower()}/{obj['metadata']['name']} {result.action}")
            if tarball is not None:
                from substratus.cli.upload import finish_upload, show_build

                finish_upload(c, obj, tarball, err)
                if follow_build:
                    show_build(c, obj, err)
            applied.append(obj)
        if wait:
            from substratus.cli.waiting import wait_for

            for obj in applied:
                if obj["kind"] == "Secret":
                    continue
                meta = obj["metadata"]
                wait_for(
                    c,
                    obj["kind"],
                    meta["namespace"],
                    meta["name"],
                    "ready",
                    parse_duration(timeout),
                    err,
                )
                echo(f"{obj['kind'].lower()}/{meta['name']} ready")

    guarded(run)

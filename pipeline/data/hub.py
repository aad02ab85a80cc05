"""Push an assembled dataset folder to the Hugging Face Hub.

    report = push_dataset_folder("runs/demo/06-assemble/dataset", "me/deltaprompts-demo")
    print(report.summary())

`_upload` is the one function that talks to the Hub; everything else here is local:
listing what would be sent, finding the token, deciding whether a failure is worth a
retry. The upload is huggingface_hub's resumable folder upload: in huggingface_hub 2.x
(2.4 checked) `upload_folder` streams files through xet, commits in batches and resumes by
re-running, and the separate `upload_large_folder` of earlier versions no longer exists.
Without hf_xet it falls back to one LFS commit, which also resumes: objects the Hub already
holds are not sent again. Either way, re-running after a failure sends only what the Hub
lacks (content by its hash, committed files by their oid), so a retry here simply calls
`_upload` again.

The token is never printed, logged or put in a report or an error message: the report
says only where it came from.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.errors import UserError
from pipeline.core.shards import file_sha256

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
DEFAULT_REVISION = "main"
DEFAULT_COMMIT_MESSAGE = "Upload DeltaPrompts dataset"

# Folders that are never data: git metadata, and `.cache/` where huggingface_hub keeps
# upload/download state (`.cache/huggingface/`). The Hub also refuses paths under either.
EXCLUDED_DIRS = (".git", ".cache")
IGNORE_PATTERNS = [p for d in EXCLUDED_DIRS for p in (d, f"{d}/*", f"*/{d}", f"*/{d}/*")]

# Worth a retry: 412 = the branch moved under the commit (a concurrent push), 429 = rate
# limited, 408/5xx = the server or the path to it hiccuped. Anything else (401, 403, 404,
# 400 on a bad card, ...) will fail the same way again, so it is raised at once.
RETRY_STATUS = frozenset({408, 412, 429, 500, 502, 503, 504})


class PushError(RuntimeError):
    """The push failed; the message says why and whether re-running will resume."""


class PushRefusedError(PushError, UserError):
    """Nothing was sent: the folder is not exactly what the assemble stage wrote."""


@dataclass
class PushFile:
    path: str  # path in the repo (posix, relative to the folder)
    size: int  # bytes


@dataclass
class PushReport:
    folder: str
    repo_id: str
    revision: str
    commit_message: str
    private: bool
    dry_run: bool
    endpoint: str
    token_source: str | None  # "argument", "HF_TOKEN", "login" or None; never the token
    files: list[PushFile] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # local files left out, and why not data
    warnings: list[str] = field(default_factory=list)
    attempts: int = 0  # calls of _upload (0 on a dry run)
    commit_oid: str | None = None
    commit_url: str | None = None
    repo_type: str = REPO_TYPE

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def target(self) -> str:
        return f"{self.endpoint.rstrip('/')}/datasets/{self.repo_id}@{self.revision}"

    def summary(self) -> str:
        head = "DRY RUN: would push" if self.dry_run else "pushed"
        lines = [
            f"{head} {len(self.files)} file(s), {_human(self.total_bytes)} to {self.target}",
            f"  commit message: {self.commit_message!r}"
            + ("; private repo if created" if self.private else ""),
            f"  token: {'from ' + self.token_source if self.token_source else 'none found'}",
        ]
        lines += [f"  {f.size:>12,d}  {f.path}" for f in self.files]
        if self.excluded:
            lines.append(
                f"  left out (not data): {len(self.excluded)} file(s) under .git/ or .cache/"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.commit_oid:
            lines.append(
                f"  commit {self.commit_oid} after {self.attempts} attempt(s): {self.commit_url}"
            )
        return "\n".join(lines)


def push_dataset_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    max_attempts: int = 5,
    retry_base_wait_s: float = 2.0,
    retry_max_wait_s: float = 60.0,
    expected_files: dict[str, str] | None = None,
) -> PushReport:
    """Upload every data file of `folder` to the dataset repo `repo_id` (created if absent).

    `private` applies only when the repo is created here. `endpoint` defaults to $HF_ENDPOINT
    or huggingface_hub's default. A dry run lists the files and the target and makes no
    network call. Transient failures (412, 429, 5xx, dropped connections) are retried up
    to `max_attempts` calls in all, waiting as the server's Retry-After asks or else
    exponentially; each retry resumes rather than restarts.

    ``expected_files`` (path in the folder -> sha256, as the assemble stage recorded them in
    its manifest): when given, every file that would be sent must be one of them with that
    exact content, and none of them may be missing; otherwise nothing is sent, a dry run
    included (PushRefusedError).
    """
    root = Path(folder)
    if not root.is_dir():
        raise PushError(f"dataset folder not found: {root}")
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"repo id must look like 'namespace/name', got {repo_id!r}")
    if max_attempts < 1:
        raise PushError(f"max_attempts must be >= 1, got {max_attempts}")
    files, excluded = list_push_files(root)
    if not files:
        raise PushError(f"nothing to push: {root} holds no data files")
    if expected_files is not None:
        check_files(root, files, expected_files)
    warnings = check_card(root)
    token_value, token_source = resolve_token(token, allow_network=not dry_run)
    report = PushReport(
        folder=str(root),
        repo_id=repo_id,
        revision=revision or DEFAULT_REVISION,
        commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
        private=private,
        dry_run=dry_run,
        endpoint=resolve_endpoint(endpoint),
        token_source=token_source,
        files=files,
        excluded=excluded,
        warnings=warnings,
    )
    if dry_run:
        return report
    if token_value is None:
        raise PushError(
            "no Hugging Face token: pass one, set HF_TOKEN, or log in with `hf auth login`"
        )
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():  # every request would fail; say so instead of retrying
        raise PushError("HF_HUB_OFFLINE is set: unset it to push (a --dry-run works offline)")

    api = HfApi(endpoint=report.endpoint, token=token_value)
    for attempt in range(1, max_attempts + 1):
        report.attempts = attempt
        try:
            commit = _upload(
                api,
                root,
                repo_id,
                private=private,
                revision=revision,
                commit_message=report.commit_message,
            )
            break
        except Exception as exc:  # classified below; KeyboardInterrupt is not caught
            status, retry_after = failure_kind(exc)
            transient = status in RETRY_STATUS or status == "network"
            if not transient or attempt == max_attempts:
                raise PushError(
                    f"push to {report.target} failed after {attempt} attempt(s): "
                    f"{type(exc).__name__}: {_scrub(str(exc), token_value)}"
                    + (
                        "; re-run the same command to resume (content already uploaded is "
                        "not sent again)"
                        if transient
                        else ""
                    )
                ) from exc
            wait = (
                retry_after if retry_after is not None else retry_base_wait_s * 2 ** (attempt - 1)
            )
            wait = min(max(wait, 0.0), retry_max_wait_s)
            log.warning(
                "push attempt %d/%d failed (%s); resuming in %.1fs",
                attempt,
                max_attempts,
                status,
                wait,
            )
            time.sleep(wait)
    report.commit_oid = commit.oid
    report.commit_url = commit.commit_url
    return report


def _upload(
    api, folder: Path, repo_id: str, *, private: bool, revision: str | None, commit_message: str
):
    """The one place that calls the Hub: create the repo if needed, upload the folder."""
    api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=REPO_TYPE,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=list(IGNORE_PATTERNS),
    )


def list_push_files(root: Path) -> tuple[list[PushFile], list[str]]:
    """(files to send, sorted by path; local files left out because they are not data)."""
    files: list[PushFile] = []
    excluded: list[str] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if any(part in EXCLUDED_DIRS for part in rel.split("/")):
            excluded.append(rel)
        else:
            files.append(PushFile(path=rel, size=path.stat().st_size))
    return files, excluded


def check_files(root: Path, files: list[PushFile], expected: dict[str, str]) -> None:
    """Refuse unless ``files`` are exactly ``expected`` (path -> sha256), byte for byte."""
    listed = {f.path for f in files}
    problems = [f"{p} is missing" for p in sorted(set(expected) - listed)]
    problems += [f"{p} was not written by the assemble stage" for p in sorted(listed - set(expected))]
    problems += [f"{p} differs from what the assemble stage wrote" for p in sorted(listed & set(expected))
                 if file_sha256(root / p) != expected[p]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise PushRefusedError(
            f"refusing to push {root}: {'; '.join(problems[:3])}{more}. Rerun the assemble "
            "stage to rebuild the dataset, then push")


def check_card(root: Path) -> list[str]:
    """Warnings about README.md; a card whose front matter is not YAML is an error here,
    offline, rather than a rejection by the Hub after the files were hashed."""
    card = root / "README.md"
    if not card.is_file():
        return ["no README.md: the dataset will have no card"]
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return ["README.md has no YAML front matter: the Hub will show no metadata"]
    end = text.find("\n---", 3)
    if end < 0:
        raise PushError("README.md: YAML front matter is not closed by a '---' line")
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError as e:
        raise PushError(f"README.md: front matter is not valid YAML: {e}") from None
    if not isinstance(meta, dict):
        raise PushError("README.md: front matter must be a YAML mapping")
    return []


def resolve_token(
    token: str | None, *, allow_network: bool = True
) -> tuple[str | None, str | None]:
    """(token, where it came from): the argument, $HF_TOKEN, or the HF login.

    `huggingface_hub.get_token()` may exchange an OIDC token over the network, so a dry
    run (allow_network=False) only looks for the login's token file.
    """
    if token:
        return token, "argument"
    env = os.environ.get("HF_TOKEN")
    if env and env.strip():
        return env.strip(), "HF_TOKEN"
    if allow_network:
        from huggingface_hub import get_token

        found = get_token()
        return (found, "login") if found else (None, None)
    from huggingface_hub import constants

    return (None, "login") if Path(constants.HF_TOKEN_PATH).is_file() else (None, None)


def resolve_endpoint(endpoint: str | None) -> str:
    """The Hub URL: the argument, else $HF_ENDPOINT read now, else huggingface_hub's default.

    Read at call time rather than from huggingface_hub.constants, which froze it at import.
    """
    if endpoint:
        return endpoint.rstrip("/")
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def failure_kind(exc: BaseException) -> tuple[int | str | None, float | None]:
    """(HTTP status, or "network" for a transport error, or None; Retry-After seconds).

    huggingface_hub wraps errors (an LFS upload failure arrives as a RuntimeError whose
    cause is the HTTP error), so the whole cause chain is searched.
    """
    import httpx
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OfflineModeIsEnabled):  # a ConnectionError, but retrying is futile
            return None, None
        response = getattr(cur, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status, _retry_after(response)
        if _is_transport_error(cur, httpx):
            return "network", None
        cur = cur.__cause__ or cur.__context__
    return None, None


def _is_transport_error(exc: BaseException, httpx_module) -> bool:
    if isinstance(exc, (httpx_module.TransportError, ConnectionError, TimeoutError)):
        return True
    # huggingface_hub 2.x speaks through httpx2 (a separate package), 0.x through requests.
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:
        pass
    try:
        import requests

        return isinstance(exc, (requests.ConnectionError, requests.Timeout))
    except ImportError:
        return False


def _retry_after(response) -> float | None:
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "<token>") if secret else text


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"

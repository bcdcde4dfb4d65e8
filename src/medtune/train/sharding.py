"""Sharded training with FSDP through `accelerate launch --config_file recipes/accelerate/fsdp.yaml`.

accelerate reads the FSDP settings (version, wrap policy, checkpoint format) from the environment its
launcher sets; the trainers then shard the model by decoder layer. medtune adds three things:
- a full model at the end of a run (checkpoints stay sharded, for `--resume`);
- FSDP on the CPU: accelerate turns it on only for accelerators and silently falls back to DDP on
  CPU processes, so a 2-process gloo run (`recipes/accelerate/fsdp-cpu.yaml`, what CI tests the
  sharded path with) is switched to FSDP here;
- QLoRA under FSDP stores 4-bit weights in the compute dtype, so FSDP can shard them alongside the
  16-bit ones (Answer.AI's FSDP-QLoRA).
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from medtune.logs import log
from medtune.models import load_for_inference


def fsdp_requested() -> bool:
    """Launched by accelerate with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


class FsdpOnCpu:
    """Trainer mixin: FSDP for CPU processes that accelerate launched with an FSDP config."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if fsdp_requested() and state.distributed_type == DistributedType.MULTI_CPU:
            # The plugin accelerate would have built: it reads the launcher's FSDP_* variables.
            state.fsdp_plugin = FullyShardedDataParallelPlugin()
            state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does for GPUs
            self.is_fsdp_enabled = True


def save_full_model(trainer, model_dir: str) -> None:
    """Save the whole model (or adapter) of a run, gathered from every rank's shard when sharded.

    Checkpoints keep the launcher's format (sharded by default: each rank writes its part, and
    `--resume` reads them back); the run's model is one ordinary folder that any tool loads."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(model_dir)


def evaluation_model(trainer, model_dir: str):
    """The model the main process evaluates after training: the trainer's own or, under FSDP, where each process
    holds only a shard, the saved whole model, loaded once this process's optimizer state is freed. None when the
    whole model does not fit this process's device (it was sharded for being too large): evaluate the saved model
    later with `medtune eval` on a machine that holds it."""
    if not trainer.is_fsdp_enabled:
        return trainer.model
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    try:
        return load_for_inference(model_dir)[0].eval()
    except torch.cuda.OutOfMemoryError:
        log.warning("the gathered model does not fit one device: no evaluation after training; run `medtune eval %s`", model_dir)
        return None

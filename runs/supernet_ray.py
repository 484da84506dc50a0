"""Supernet training on a Ray cluster through Ray Train: `TorchTrainer`, data-parallel over CPU workers (or GPUs).

Every worker runs `evaluators.supernet.train_supernet` on the same steps: the same subnets (a function of
seed and step), its share of each step's batch (every `world`-th image from its rank), and after the step's
backward passes one all-reduce that averages the gradients (gloo on CPU, NCCL on GPUs; the process group is
Ray Train's). That is DDP's arithmetic without DDP's module wrapper, which assumes one forward per backward
and the same parameters used every step: a sandwich step runs 2 + k subnets, each a different slice.
Rank 0 writes OUT/supernet.pt; all workers resume from it, so a killed run restarted with the same arguments
continues. On a multi-node cluster OUT must be storage every node sees (as Ray Train requires for checkpoints).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from evaluators.supernet import SupernetError, SupernetRecipe, TrainState, load_supernet
from search_space import SearchSpace


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker (runs in its own process, on any node)."""
    import ray.train
    import torch
    import torch.distributed as dist

    from evaluators import load_data
    from evaluators.supernet import DataParallel, train_supernet

    ctx = ray.train.get_context()
    torch.set_num_threads(config["threads"])
    args = config["data_args"]
    data = load_data(args["spec"], resolution=args["resolution"], seed=args["seed"])
    if data.fingerprint != config["data_fingerprint"]:
        raise SupernetError(f"worker {ctx.get_world_rank()}: data {args['spec']} differs from the driver's")
    world = ctx.get_world_size()

    def average_grads(params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]  # the same set on every worker: same subnets
        if not grads or world == 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    state = train_supernet(SearchSpace.from_dict(config["space"]), data,
                           SupernetRecipe.from_dict(config["recipe"]), seed=config["seed"],
                           out_dir=config["out_dir"], device=config["device"], data_seed=args["seed"],
                           parallel=DataParallel(ctx.get_world_rank(), world, average_grads))
    ray.train.report({"step": state.step, "train_loss": state.history[-1]["train_loss"] if state.history else None})


def train_supernet_ray(space: SearchSpace, data: Any, recipe: SupernetRecipe, *, seed: int, out_dir: Path,
                       workers: int = 2, address: str | None = None, data_seed: int | None = None,
                       device: str = "cpu") -> TrainState:
    """Train (or resume) a supernet with `workers` Ray Train workers (on a private local Ray without
    `address`); returns the trained state read back from OUT/supernet.pt."""
    from runs.executors import RaySession

    out_dir = Path(out_dir).resolve()  # rank 0 creates it with the first checkpoint: a failed start leaves none
    threads = recipe.recipe.threads
    gpu = device.startswith("cuda")
    session = RaySession(address, workers * threads)
    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        config = {"space": space.to_dict(), "recipe": recipe.to_dict(), "seed": seed, "out_dir": str(out_dir),
                  "device": "cuda" if gpu else "cpu", "threads": threads, "data_fingerprint": data.fingerprint,
                  "data_args": {"spec": data.source, "resolution": data.resolution,
                                "seed": seed if data_seed is None else data_seed}}
        with tempfile.TemporaryDirectory(prefix="bneck-raytrain-") as storage:
            trainer = TorchTrainer(_worker_loop, train_loop_config=config,
                                   scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                                                resources_per_worker={"CPU": threads}),
                                   run_config=RunConfig(storage_path=storage, name="supernet"))
            try:
                trainer.fit()
            except Exception as exc:  # Ray wraps the worker's error; its first line says what happened
                cause = getattr(exc, "__cause__", None) or exc
                first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
                raise SupernetError(f"Ray Train failed: {first}") from None
    finally:
        session.close()
    supernet, meta = load_supernet(out_dir, allow_partial=True)
    return TrainState(supernet, meta["step"], meta["total_steps"], meta["train_s"], meta["history"],
                      Path(meta["path"]))

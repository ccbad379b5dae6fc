"""Scaling of training over processes (torch.distributed DDP; gloo on CPU, NCCL on GPUs).

For each process count N the script launches itself through torchrun's entry point
(``torch.distributed.run --standalone --nproc-per-node N``); every process builds the same
:class:`difflab.train.loop.Trainer` (global batch ``--batch-size``, split over the ranks), takes
warm-up steps, then times ``--steps`` optimizer steps twice, interleaved in rounds: as trained
(DDP all-reduces the gradients in buckets during the backward pass) and under DDP's ``no_sync``
(no gradient communication: the ranks drift apart, which is harmless for timing). Reported:

- images/s of the global batch at each N, and the scaling efficiency ``ips(N) / (N ips(1))``;
- the communication share of a step, ``1 - t(no_sync) / t(synced)``: the time the all-reduce
  adds that the backward pass does not hide.

Goal: at 2 processes, efficiency >= ``--goal`` (default 0.5: two processes at least as fast as
one). On a CPU machine the processes share its cores, so more processes mostly split the same
compute; the number says how much the split and the gradient exchange cost on top.

    python benchmarks/bench_distributed.py                 # 1 and 2 processes, CPU
    python benchmarks/bench_distributed.py --nproc 1,2,4,8 --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    """One process of a launch: time synced and unsynced steps, rank 0 writes the result."""
    import torch

    from difflab.data import DataConfig
    from difflab.device import resolve_device
    from difflab.nets import NetShape
    from difflab.run_config import TrainConfig
    from difflab.train.distributed import process_group
    from difflab.train.loop import Trainer, prepare_data

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with process_group(device, timeout=300) as world:
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
        cfg = TrainConfig(data=DataConfig(source="mnist", limit=2048), batch_size=args.batch_size,
                          steps=10**6, seed=0, device=str(device), checkpoint_every=10**6,
                          sample_every=10**6, net_shape=NetShape(base_channels=args.base_channels))
        cfg, data = prepare_data(cfg, lambda _: None)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, data, Path(tmp), device, lambda _: None)
            trainer.distribute()
            trainer.net.train()

            def timed(sync: bool) -> float:
                ddp = trainer.ddp
                world.barrier()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    if sync or ddp is None:
                        trainer.train_step()
                    else:
                        with ddp.no_sync():  # type: ignore[operator]
                            trainer.train_step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return world.broadcast(time.perf_counter() - t0)

            for _ in range(args.warmup):
                trainer.train_step()
            synced, unsynced = [], []
            for _ in range(args.rounds):
                synced.append(timed(True))
                unsynced.append(timed(False))
            if world.main:
                result = {"nproc": world.size, "synced_s": synced, "unsynced_s": unsynced}
                Path(args.result).write_text(json.dumps(result))


def launch(n: int, result: Path) -> dict:
    from torch.distributed.run import main as torchrun

    worker_argv = [__file__, *sys.argv[1:], "--worker", "--result", str(result)]
    torchrun(["--standalone", "--nproc-per-node", str(n), *worker_argv])
    return json.loads(result.read_text())


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2", help="process counts to time (default: 1,2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default: 64)")
    p.add_argument("--base-channels", type=int, default=16, help="UNet width (default: 16, the default net)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default: 10)")
    p.add_argument("--rounds", type=int, default=3, help="synced/unsynced rounds, median kept (default: 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    p.add_argument("--goal", type=float, default=0.5, help="least efficiency at 2 processes (default: 0.5)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: batch 16, 3 steps, one round (the goal is reported, not enforced)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.rounds, args.warmup = 16, 3, 1, 1
    if args.worker:
        worker(args)
        return 0
    counts = [int(c) for c in args.nproc.split(",")]
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            r = launch(n, Path(tmp) / f"n{n}.json")
            synced, unsynced = median(r["synced_s"]), median(r["unsynced_s"])
            rows.append((n, args.steps * args.batch_size / synced, 1 - unsynced / synced))
    base = rows[0][1] / counts[0]
    print(f"# DDP scaling: batch {args.batch_size} (global), UNet base {args.base_channels}, MNIST 28x28, "
          f"{args.device}, {args.threads} thread(s)/process, {os.cpu_count()} cores, load before "
          f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("| processes | images/s | efficiency | communication share of a step |")
    print("|---|---|---|---|")
    for n, ips, comm in rows:
        comm_text = "-" if n == 1 else f"{max(comm, 0.0):.0%}"
        print(f"| {n} | {ips:.1f} | {ips / (n * base):.2f} | {comm_text} |")
    two = [ips / (n * base) for n, ips, _ in rows if n == 2]
    if two and two[0] < args.goal:
        print(f"goal missed: efficiency {two[0]:.2f} at 2 processes < {args.goal}")
        return 0 if args.quick else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`forge pretrain` and `forge bench-peak`."""

import argparse
from typing import Any

from forge.cli.common import add_command
from forge.config import from_args, load_toml
from forge.errors import ConfigError
from forge.model.config import PRESETS
from forge.train.pretrain import PretrainConfig, pretrain


def register(commands: Any) -> None:
    p = add_command(
        commands,
        "pretrain",
        config_cls=PretrainConfig,
        skip=("model.vocab_size",),
        help="train a decoder-only transformer on token shards",
        description="Train a decoder-only transformer on next-token prediction. Model options "
        "start from --preset and can be changed one by one (--model.dim 256); training options "
        "are flags or a TOML file (--config). With --init-from RUN the model (shape and weights) and "
        "the tokenizer are the run's: continued pretraining on --data.",
    )
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"model shape preset: {', '.join(PRESETS)} (default: tiny; none with --init-from, whose "
        "shape is the run's)",
    )
    p.set_defaults(handler=_pretrain)

    b = add_command(
        commands,
        "bench-peak",
        help="measure this machine's matmul peak (FLOP/s), the yardstick of training MFU",
        description="Time a large square matmul in each dtype on the device and threads given, and print "
        "the best rate: what `forge pretrain` measures MFU against.",
    )
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    b.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: float32,bfloat16)")
    b.add_argument("--size", type=int, default=0, help="matrix size (default: 2048 on CPU, 8192 on GPU)")
    b.add_argument("--seconds", type=float, default=2.0, help="time spent per dtype (default: 2)")
    b.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")
    b.set_defaults(handler=_bench_peak)


def _pretrain(args: argparse.Namespace) -> None:
    name = args.preset or "tiny"
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is not a preset; choose one of {', '.join(PRESETS)}")
    init_from = getattr(args, "init_from", "") or (args.config and load_toml(args.config).get("init_from"))
    # a continued run's shape is its --init-from run's: a preset applies only when asked for, and then
    # must match it
    preset = {} if init_from and args.preset is None else {"model": dict(PRESETS[name])}
    pretrain(from_args(PretrainConfig, args, preset=preset))


def _bench_peak(args: argparse.Namespace) -> None:
    import torch

    from forge.runtime import resolve_device, set_threads
    from forge.train.loop import DTYPES
    from forge.train.mfu import measure_peak_flops

    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    names = [n.strip() for n in args.dtypes.split(",") if n.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or args.size < 0 or args.seconds <= 0:
        raise ConfigError(
            f"--dtypes takes {', '.join(DTYPES)}; --size >= 0 and --seconds > 0 (got {unknown})"
        )
    for name in names:
        flops = measure_peak_flops(
            DTYPES[name] or torch.float32, device, size=args.size, seconds=args.seconds
        )
        print(f"{name:>9} on {device} ({threads} threads): {flops / 1e9:,.1f} GFLOP/s")

"""``pararnn-hf`` command line entry point."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from collections.abc import Sequence


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from . import BACKENDS, __version__

    print(f"pararnn_hf    {__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    for dist in ("torch", "triton", "transformers", "safetensors", "accelerate", "tokenizers"):
        print(f"{dist:<13} {_version(dist)}")
    cuda = torch.cuda.is_available()
    print(f"cuda          {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    print(f"backends      {', '.join(BACKENDS)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pararnn-hf", description="ParaRNN language models for Hugging Face")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, devices and available backends")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .runtime import tune_cpu_allocator

    args = build_parser().parse_args(argv)
    tune_cpu_allocator()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

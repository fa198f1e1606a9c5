"""``pararnn-hf`` command line entry point."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .extras import MissingExtraError, require_extras
from .model_files import TOKENIZER_FILES, read_config
from .names import BACKENDS, CELL_NAMES
from .ranges import RANGES, argument, eval_batch_size


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from . import __version__

    print(f"pararnn_hf    {__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    for dist in ("torch", "triton", "transformers", "safetensors", "accelerate", "tokenizers"):
        print(f"{dist:<13} {_version(dist)}")
    cuda = torch.cuda.is_available()
    print(f"cuda          {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    print(f"backends      {', '.join(BACKENDS)}")
    return 0


# What the package raises for bad input: files and folders (OSError), arguments and values
# (ValueError, with ConversionError, CardError and UnsafeOutputError; TypeError), NaN/Inf.
USER_ERRORS = (OSError, ValueError, TypeError, ArithmeticError, MissingExtraError)


def check_device(cmd: str, device: str) -> None:
    """A device string torch understands, and one this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SystemExit(f"pararnn-hf {cmd}: --device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"pararnn-hf {cmd}: --device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SystemExit(f"pararnn-hf {cmd}: --device {device}: this machine has {torch.cuda.device_count()} GPU(s)")


def check_model_folder(cmd: str, model_dir: str, need_tokenizer: bool = False) -> Path:
    """A local saved model folder (nothing is looked up on the Hub)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise SystemExit(f"pararnn-hf {cmd}: no such model folder: {model_dir}")
    if not (folder / "config.json").is_file():
        raise SystemExit(f"pararnn-hf {cmd}: {model_dir} is not a saved model folder (no config.json)")
    try:
        read_config(folder)  # an unreadable config.json is named here, not blamed on what reads it next
    except ValueError as err:
        raise SystemExit(f"pararnn-hf {cmd}: {' '.join(str(err).split())}") from None
    if need_tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise SystemExit(
            f"pararnn-hf {cmd}: {model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into the folder with tokenizer.save_pretrained(folder)"
        )
    return folder


def _load_model_and_tokenizer(cmd: str, model_dir: str, dtype: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import ParaRNNConfig  # noqa: F401  (registers the model type)

    check_device(cmd, device)
    folder = check_model_folder(cmd, model_dir, need_tokenizer=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise SystemExit(f"pararnn-hf {cmd}: no usable tokenizer in {model_dir}: {err}") from None
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    except Exception as err:  # truncated or corrupt weights raise many types
        raise SystemExit(f"pararnn-hf {cmd}: cannot load the model in {model_dir}: {_one_line(err)}") from None
    return model.to(device).eval(), tokenizer


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    if args.compile and (args.num_beams != 1 or args.repetition_penalty != 1.0):
        raise SystemExit(
            "pararnn-hf generate: --compile captures the fast path's step, which beam search and repetition "
            "penalties do not take; drop --num-beams and --repetition-penalty, or --compile"
        )
    check_generation_config(args.model)
    model, tokenizer = _load_model_and_tokenizer("generate", args.model, args.dtype, args.device)
    if args.compile:  # every token's step compiled (CPU) or replayed from one CUDA graph
        model.config.decode_capture = "cuda-graph" if model.device.type == "cuda" else "compile"
    if args.seed is not None:
        torch.manual_seed(args.seed)
    inputs = tokenizer([args.prompt], return_tensors="pt").to(args.device)
    if inputs["input_ids"].shape[1] == 0:
        raise SystemExit("pararnn-hf generate: the prompt is empty (no tokens); give --prompt some text")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.num_beams == 1 else None
    output = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        pad_token_id=pad_id,
        streamer=streamer,
    )
    if streamer is None:  # beam search cannot stream: print the winner
        print(tokenizer.decode(output[0], skip_special_tokens=True))
    return 0


GENERATION_KEYS = (
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "num_beams",
    "num_return_sequences",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
)


def check_generation_config(model_dir: str) -> None:
    """The folder's ``generation_config.json`` (when it has one): its numeric settings in range
    (``ranges.RANGES``), before anything is loaded."""
    import json

    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(values).__name__}")
    for key in GENERATION_KEYS:
        if values.get(key) is not None:
            RANGES[key].check(f"{path}: {key}", values[key])


def check_launch(env: dict[str, str] | None = None) -> None:
    """Refuse a run that ``accelerate launch`` asked to span several processes but started as
    one: its simple (CPU) launcher sets the rendezvous address for ``num_processes > 1`` and
    starts several processes only through mpirun, which would set a world size."""
    env = os.environ if env is None else env
    sizes = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and not any(k in env for k in sizes):
        raise ValueError(
            "accelerate launch was asked for several processes but started one (its CPU launcher needs "
            "mpirun for that); run `accelerate launch --config_file configs/accelerate_ddp_cpu.yaml` "
            "(multi_gpu launcher) or `accelerate launch --multi_gpu --num_processes N`, with --use_cpu "
            "--ddp_backend gloo, or use torchrun"
        )


def check_fsdp(training_args) -> None:
    """Refuse ``--fsdp`` where accelerate would not honour it: on the CPU it runs the processes
    as plain DDP (``MULTI_CPU``) and drops the FSDP plugin without a word."""
    if training_args.fsdp and training_args.device.type == "cpu":
        raise ValueError(
            "--fsdp needs GPUs: accelerate runs a CPU launch as plain DDP and would ignore it; drop --fsdp "
            "on the CPU (the model itself shards with torch's fully_shard on CPU; see the README's FSDP section)"
        )


def _parse_trainer_command(command: str, first, argv: list[str]):
    """``first`` (the command's own dataclass), ``DataArguments`` and ``TrainingArguments``
    parsed by ``HfArgumentParser``, so every ``TrainingArguments`` field is a flag."""
    from transformers import HfArgumentParser, TrainingArguments

    from .training import DataArguments

    class Parser(HfArgumentParser):
        def error(self, message: str) -> NoReturn:
            one_line_usage_error(self, message)

    if not any(a.split("=", 1)[0] in ("--output_dir", "--output-dir") for a in argv) and not (
        {"-h", "--help"} & set(argv)
    ):
        # transformers' scripts require it too: a run with no arguments would start thousands
        # of steps into ./trainer_output
        raise ValueError("which folder? give --output_dir DIR (checkpoints and the final model go there)")
    parser = Parser((first, DataArguments, TrainingArguments), prog=f"pararnn-hf {command}")
    raw = parser.parse_args(argv)
    if raw.eval_steps is not None and raw.eval_steps <= 0:
        # TrainingArguments would quietly turn 0 into --logging_steps
        raise ValueError(
            f"--eval_steps must be a finite number > 0, got {raw.eval_steps} (leave it out to evaluate every "
            "--logging_steps)"
        )
    parsed = parser.parse_args_into_dataclasses(args=argv)
    check_fsdp(parsed[2])
    return parsed


def cmd_upcycle(argv: list[str]) -> int:
    """A Llama-family teacher distilled into a ParaRNN student (``pararnn_hf.distill``)."""
    require_extras("this command", "train")
    check_launch()
    from .distill import UpcycleArguments, run_upcycle

    up_args, data_args, training_args = _parse_trainer_command("upcycle", UpcycleArguments, argv)
    summary = run_upcycle(up_args, data_args, training_args)
    if summary.get("is_main_process", True):
        print(
            f"saved to {summary['output_dir']}; eval loss {summary['eval_loss']:.4f}, "
            f"perplexity {summary['eval_perplexity']:.2f}"
        )
    return 0


def cmd_train(argv: list[str]) -> int:
    """Parsed by ``HfArgumentParser`` so every ``TrainingArguments`` field is a flag."""
    require_extras("this command", "train")  # TrainingArguments itself needs accelerate
    check_launch()
    from .training import ModelArguments, run_training

    model_args, data_args, training_args = _parse_trainer_command("train", ModelArguments, argv)
    if training_args.process_index == 0:
        backend = training_args.ddp_backend or ("nccl" if training_args.device.type == "cuda" else "gloo")
        where = f" ({backend})" if training_args.world_size > 1 else ""
        print(f"pararnn-hf train: world size {training_args.world_size}{where} on {training_args.device.type}")
    summary = run_training(model_args, data_args, training_args)
    if summary.get("is_main_process", True):  # one line per run, not one per process
        print(
            f"saved to {summary['output_dir']}; eval loss {summary['eval_loss']:.4f}, "
            f"perplexity {summary['eval_perplexity']:.2f}; loss curves {summary['loss_plot']}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    require_extras("this command", "train", "eval")
    from .training.demo import run_demo

    run_demo(
        cell=args.cell,
        steps=args.steps,
        output=args.output,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        overwrite=args.overwrite,
        seed=args.seed,
        data=args.data,
        max_eval_sequences=args.max_eval_sequences,
        eval_limit=args.eval_limit,
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .conversion import from_llama, from_reference, to_reference

    common = dict(overwrite=args.overwrite, show_progress=not args.no_progress)
    if args.direction == "from-reference":
        report = from_reference(
            args.out,
            cells=args.cells,
            lm=args.lm,
            config=args.config,
            base=args.base,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            seed=args.seed,
            **common,
        )
        print(f"wrote {report['out']}; {report['rest']}; tokenizer files: {report['tokenizer'] or 'none'}")
    elif args.direction == "to-reference":
        index = to_reference(
            args.model, args.out, dtype=args.dtype, fmt=args.format, cells_only=args.cells_only, **common
        )
        lm = "" if index["lm"] is None else f"{index['lm']} (LM layout) with {index['sidecar']}, "
        print(f"wrote {args.out}: {lm}{len(index['cells'])} cell files, index.json")
    else:
        report = from_llama(
            args.model,
            args.out,
            cell=args.cell,
            num_heads=args.num_heads,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            seed=args.seed,
            **common,
        )
        print(
            f"wrote {report['out']}: {report['layers']} layers, attention replaced by fresh Para"
            f"{args.cell.upper()} mixers ({report['num_heads']} heads); tokenizer files: "
            f"{report['tokenizer'] or 'none'}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.print_tasks_path:
        from .eval.local_tasks import tasks_path

        print(tasks_path())
        return 0
    if not args.model:
        raise ValueError("which model? give --model DIR (a saved model folder)")
    require_extras("this command", "eval")
    from .eval import run_eval

    check_device("eval", args.device)
    check_model_folder("eval", args.model)

    model_args = parse_model_args(args.model_args)
    if args.solver_backend:
        model_args["solver_backend"] = args.solver_backend
    if args.prefill_chunk_size is not None:
        model_args["prefill_chunk_size"] = args.prefill_chunk_size
    if args.output and args.output_path:
        raise ValueError("give --output or --output-path, not both")
    output = (
        args.output or lm_eval_output_file(args.output_path, args.model) or str(Path(args.model) / "eval_results.json")
    )
    summary = run_eval(
        args.model,
        [t for t in args.tasks.split(",") if t],
        output=output,
        include_path=args.include_path,
        batch_size=args.batch_size,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        device=args.device,
        model_args=model_args,
        log_samples=args.log_samples,
        overwrite=args.overwrite,
        gen_kwargs=args.gen_kwargs,
        seeds=args.seed,
    )
    from lm_eval.utils import make_table

    print(make_table(summary))
    print(f"results written to {output}")
    for path in summary.get("samples_files", []):
        print(f"samples written to {path}")
    return 0


def parse_model_args(text: str | None) -> dict:
    """lm_eval's ``--model_args`` string (``k=v,k2=v2``). ``pretrained`` is ``--model``."""
    if not text:
        return {}
    from lm_eval.utils import simple_parse_args_string

    try:
        values = simple_parse_args_string(text)
    except ValueError as err:
        raise ValueError(f"--model_args {text!r} is not k=v[,k=v...]: {err}") from None
    if "pretrained" in values:
        raise ValueError("--model_args: give the model as --model DIR, not pretrained=")
    return values


def eval_seeds(text: str) -> tuple:
    """lm_eval's ``--seed``: one integer for all four seeds (python, numpy, torch, few-shot),
    or four comma-separated values, each an integer or None."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 4):
        raise argparse.ArgumentTypeError(f"must be one integer or four comma-separated ones, got {text!r}")
    values = []
    for part in parts:
        if part == "None":
            values.append(None)
            continue
        try:
            values.append(RANGES["seed"].check("seed", int(part)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be integers >= 0 or None, got {text!r}") from None
    return tuple(values * 4) if len(values) == 1 else tuple(values)


def lm_eval_output_file(output_path: str | None, model: str) -> str | None:
    """lm_eval's ``--output_path``: a path ending in ``.json`` is the results file itself; any
    other path is a folder that gets ``<model, sanitised>/results_<date and time>.json``."""
    if not output_path:
        return None
    if output_path.endswith(".json"):
        return output_path
    import datetime
    import re

    name = re.sub(r"[\"<>:/|\\?*\[\]]+", "__", model)  # lm_eval's model_name_sanitized
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    return str(Path(output_path) / name / f"results_{stamp}.json")


def cmd_card(args: argparse.Namespace) -> int:
    from .model_cards import write_card

    if args.folder and args.model and args.folder != args.model:
        raise ValueError(f"give the model folder once: {args.folder!r} and --model {args.model!r} differ")
    model = args.model or args.folder
    if not model:
        raise ValueError("which model folder? give --model DIR")
    path = write_card(
        model,
        args.results,
        overwrite=args.overwrite,
        license=args.license,
        model_name=args.name,
        repo_id=args.repo_id,
        datasets=args.datasets,
    )
    print(f"wrote {path}")
    return 0


def one_line_usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error without the usage block, as every other CLI error: ``pararnn-hf <cmd>:
    <what is wrong>``. The flag is named once, not with its alternative spelling."""
    message = re.sub(r"argument (--[\w-]+)(/--[\w-]+)*: must be", r"\1 must be", message)
    message = re.sub(r"argument (--[\w-]+)(/--[\w-]+)*", r"\1", message)
    raise SystemExit(f"{parser.prog}: {' '.join(message.split())} (see {parser.prog} --help)")


class _Parser(argparse.ArgumentParser):
    """Every long option answers to both spellings, ``--max-new-tokens`` and ``--max_new_tokens``:
    users bring the dashed form from transformers' scripts and the underscore form from
    ``lm_eval`` and ``TrainingArguments``. Errors are one line."""

    def error(self, message: str) -> NoReturn:
        one_line_usage_error(self, message)

    def add_argument(self, *names, **kwargs):
        aliases = []
        for name in names:
            if name.startswith("--") and ("-" in name[2:] or "_" in name[2:]):
                body = name[2:]
                other = "--" + (body.replace("-", "_") if "-" in body else body.replace("_", "-"))
                if other not in names and other not in aliases:
                    aliases.append(other)
        return super().add_argument(*names, *aliases, **kwargs)


def _non_empty(text: str) -> str:
    if text == "":
        raise argparse.ArgumentTypeError("must be some text, got ''")
    return text


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="pararnn-hf", description="ParaRNN language models for Hugging Face")
    parser.add_argument("--version", action="version", version=f"pararnn-hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, devices and available backends")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser("demo", help="train a small ParaRNN on the built-in corpus, reload it, generate, evaluate")
    demo.add_argument("--cell", choices=CELL_NAMES, default="gru")
    demo.add_argument("--steps", type=argument("steps"), default=500)
    demo.add_argument("--output", default="pararnn-demo")
    demo.add_argument("--seq-len", type=argument("seq_len"), default=256)
    demo.add_argument("--batch-size", type=argument("batch_size"), default=16)
    demo.add_argument("--learning-rate", type=argument("learning_rate"), default=3e-3)
    demo.add_argument("--prompt", type=_non_empty, default="def main(")
    demo.add_argument("--max-new-tokens", type=argument("max_new_tokens"), default=80)
    demo.add_argument("--data", nargs="+", default=None, help="local files/folders or hf:NAME instead of builtin")
    demo.add_argument("--max-eval-sequences", type=argument("max_eval_sequences"), default=None)
    demo.add_argument(
        "--eval-limit", type=argument("eval_limit"), default=None, help="examples per lm-eval task (default: all)"
    )
    demo.add_argument("--seed", type=argument("seed"), default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    demo.set_defaults(func=cmd_demo)

    # listed for --help; its arguments are parsed by HfArgumentParser in cmd_train
    sub.add_parser("train", help="pre-train or fine-tune with Trainer (every TrainingArguments flag accepted)")
    sub.add_parser(
        "upcycle",
        help="distil a Llama-family model into a ParaRNN: attention init, layer alignment, KD (train's flags too)",
    )

    convert = sub.add_parser("convert", help="reference checkpoints <-> HF folders; upcycle Llama-style models")
    directions = convert.add_subparsers(dest="direction", required=True)
    shared = _Parser(add_help=False)
    shared.add_argument("--out", required=True, help="the folder to write (must not exist unless --overwrite)")
    shared.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], default=None)
    shared.add_argument("--overwrite", action="store_true")
    shared.add_argument("--no-progress", action="store_true")
    fr = directions.add_parser("from-reference", parents=[shared], help="reference weights -> HF folder")
    fr.add_argument("--cells", nargs="+", help="cell state dicts: one file per layer, or one file for all layers")
    fr.add_argument("--lm", help="a whole checkpoint in the reference LM training layout")
    fr.add_argument("--config", help="ParaRNNConfig JSON (needed with --cells unless --base is given)")
    fr.add_argument("--base", help="a saved ParaRNN folder giving the non-cell weights (and tokenizer)")
    fr.add_argument("--tokenizer", help="a folder whose tokenizer files to copy")
    fr.add_argument("--max-shard-size", default="5GB")
    fr.add_argument("--seed", type=argument("seed"), default=0, help="for freshly initialised non-cell weights")
    to = directions.add_parser("to-reference", parents=[shared], help="HF folder -> reference layouts")
    to.add_argument("--model", required=True)
    to.add_argument("--format", choices=["safetensors", "pt"], default="safetensors")
    to.add_argument(
        "--cells-only",
        action="store_true",
        help="write each layer's cell tensors only (for models the reference's LM layout cannot express)",
    )
    fl = directions.add_parser("from-llama", parents=[shared], help="upcycle a Llama/Mistral-style model")
    fl.add_argument("--model", required=True, help="the Llama-style model folder")
    fl.add_argument("--cell", choices=CELL_NAMES, default="gru")
    fl.add_argument("--num-heads", type=argument("num_heads"), default=None)
    fl.add_argument("--max-shard-size", default="5GB")
    fl.add_argument("--seed", type=argument("seed"), default=0)
    convert.set_defaults(func=cmd_convert)

    ev = sub.add_parser("eval", help="lm-eval offline: bundled tasks, and standard ones when cached")
    ev.add_argument("--model", default=None, help="a saved model folder")
    ev.add_argument(
        "--print-tasks-path", action="store_true", help="print the bundled tasks' folder (an lm_eval --include_path)"
    )
    ev.add_argument("--tasks", default="pararnn_stdlib", help="comma-separated lm-eval tasks or groups")
    ev.add_argument("--include-path", nargs="*", default=None, help="folders with more task YAMLs")
    ev.add_argument("--batch-size", type=eval_batch_size, default="8", help="a count, auto or auto:N")
    ev.add_argument("--limit", type=argument("limit"), default=None, help="examples per task (or a fraction)")
    ev.add_argument("--num-fewshot", type=argument("num_fewshot"), default=None)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--output", default=None, help="results JSON file (default: MODEL/eval_results.json)")
    ev.add_argument(
        "--output-path",
        default=None,
        help="as in lm_eval: a .json file, or a folder that gets <model>/results_<time>.json",
    )
    ev.add_argument("--solver-backend", default=None, choices=BACKENDS)
    ev.add_argument("--prefill-chunk-size", type=argument("prefill_chunk_size"), default=None)
    ev.add_argument(
        "--log-samples", action="store_true", help="also write samples_<task>_<time>.jsonl beside the results"
    )
    ev.add_argument("--model-args", default=None, help="as lm_eval: k=v[,k=v] for the model (e.g. dtype=bfloat16)")
    ev.add_argument("--gen-kwargs", default=None, help="as lm_eval: k=v[,k=v] for every generation task")
    ev.add_argument(
        "--seed", type=eval_seeds, default=(0, 1234, 1234, 1234), help="as lm_eval: N, or python,numpy,torch,fewshot"
    )
    ev.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    ev.set_defaults(func=cmd_eval)

    card = sub.add_parser("card", help="write a Hub model card (README.md) into a saved model folder")
    card.add_argument("folder", nargs="?", default=None, help="the saved model folder (or --model)")
    card.add_argument("--model", default=None, help="the saved model folder, as on every other subcommand")
    card.add_argument("--results", default=None, help="results JSON from `pararnn-hf eval`")
    card.add_argument("--license", default="apache-2.0")
    card.add_argument("--name", default=None, help="model name (default: the folder name)")
    card.add_argument("--repo-id", default=None, help="Hub id used in the card's example code")
    card.add_argument("--datasets", nargs="*", default=None, help="Hub dataset ids it was trained on")
    card.add_argument("--overwrite", action="store_true", help="replace a README.md not written by pararnn-hf")
    card.set_defaults(func=cmd_card)

    gen = sub.add_parser("generate", help="generate text from a saved model, streamed as it is produced")
    gen.add_argument("--model", required=True, help="a saved model folder (with its tokenizer)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=argument("max_new_tokens"), default=100)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=argument("temperature"), default=1.0)
    gen.add_argument("--top-k", type=argument("top_k"), default=50)
    gen.add_argument("--top-p", type=argument("top_p"), default=1.0)
    gen.add_argument("--num-beams", type=argument("num_beams"), default=1)
    gen.add_argument("--repetition-penalty", type=argument("repetition_penalty"), default=1.0)
    gen.add_argument("--seed", type=argument("seed"), default=None)
    gen.add_argument(
        "--compile",
        action="store_true",
        help="capture every token's step (torch.compile; a CUDA graph on CUDA): same tokens, faster for long runs",
    )
    gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="float32")
    gen.add_argument("--device", default="cpu")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .runtime import tune_cpu_allocator

    argv = list(sys.argv[1:] if argv is None else argv)
    tune_cpu_allocator()
    command = argv[0] if argv else ""
    # Every failure ends in one line, `pararnn-hf <command>: <what is wrong>`: the errors the
    # package raises for bad input (files, folders, arguments, values) as they are worded, and
    # anything unanticipated with its type; PARARNN_HF_DEBUG=1 shows the traceback instead.
    try:
        if command == "train":
            return cmd_train(argv[1:])
        if command == "upcycle":
            return cmd_upcycle(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except USER_ERRORS as err:
        if os.environ.get("PARARNN_HF_DEBUG"):
            raise
        raise SystemExit(f"pararnn-hf {command}: {' '.join(str(err).split())}") from None
    except Exception as err:
        if os.environ.get("PARARNN_HF_DEBUG"):
            raise
        raise SystemExit(f"pararnn-hf {command}: {_one_line(err)}") from None


if __name__ == "__main__":
    sys.exit(main())

"""Batch text generation with a transformers pipeline.

    python examples/pipeline_generate.py --model path/to/model --prompts "def " "import os" --batch_size 2

The saved tokenizer pads on the left, so prompts of different lengths share a batch; the
model's left padding is exact (padded positions do not touch the recurrent state), so every
row equals what that prompt gives alone. Greedy by default; --do_sample for sampling.
"""

import argparse

from transformers import pipeline

import pararnn_hf  # noqa: F401  (registers ParaRNN with Auto*; without it pass trust_remote_code=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", nargs="+", required=True)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: transformers' choice)")
    args = parser.parse_args()

    generator = pipeline("text-generation", model=args.model, device=args.device)
    outputs = generator(
        args.prompts,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        return_full_text=False,
    )
    for prompt, out in zip(args.prompts, outputs):
        print(f"--- {prompt!r}\n{out[0]['generated_text']}")


if __name__ == "__main__":
    main()

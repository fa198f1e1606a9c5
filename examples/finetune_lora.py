"""Fine-tune a saved ParaRNN model on your own text files with LoRA and the HF Trainer.

    python examples/finetune_lora.py --model path/to/model --data my_texts/ --output_dir lora-out

--data takes files or folders (.txt, .md, .py, .rst, .jsonl with a "text" field), as
`pararnn-hf train` does. The documents are packed into --seq_len windows with document
resets; 2% of them (by name) are held out for the evaluation loss printed before and after.
The LoRA adapter is saved to --output_dir; `PeftModel.from_pretrained(base, output_dir)`
loads it, and `merge_and_unload()` folds it into the base weights. Without
`target_modules`, LoRA adapts the default ParaRNN targets `in_proj` and `out_proj`.
"""

import argparse
import math

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

from pararnn_hf.data import PackedDataset, load_corpus, tokenize_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved model folder (or Hub id in the local cache)")
    parser.add_argument("--data", nargs="+", required=True, help="text files or folders")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lora_r", type=int, default=8)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    corpus = load_corpus(args.data, validation_percent=2.0)
    train = PackedDataset(tokenize_documents(tokenizer, corpus.train), args.seq_len)
    held_out = corpus.validation or corpus.train[:1]  # a tiny corpus may hold nothing out
    evaluation = PackedDataset(
        tokenize_documents(tokenizer, held_out), args.seq_len, pad_last=True, pad_id=tokenizer.pad_token_id
    )

    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, task_type="CAUSAL_LM"))
    model.print_trainable_parameters()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, args.max_steps // 10),
            logging_steps=max(1, args.max_steps // 10),
            save_strategy="no",
            report_to="none",
        ),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(
        f"held-out loss {before:.4f} -> {after:.4f} (perplexity {math.exp(before):.2f} -> {math.exp(after):.2f}); "
        f"adapter saved to {args.output_dir}"
    )


if __name__ == "__main__":
    main()

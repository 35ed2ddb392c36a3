"""`forge generate`: stream text from a trained run; optionally explain each step and plot attention."""

import argparse
import sys
from typing import Any

import torch

from forge.cli.common import DTYPES, add_command, load_run
from forge.config import from_args
from forge.infer.batch import generate_batch
from forge.infer.beam import beam_search
from forge.infer.engine import DecodeFn, compile_decode, fit_prompt, generate_text
from forge.infer.explain import (
    Explainer,
    attention_weights,
    check_attention_target,
    explain_json,
    format_explain,
    plot_attention,
    token_texts,
)
from forge.infer.sampling import SamplingConfig
from forge.io import write_json
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer


def register(commands: Any) -> None:
    p = add_command(
        commands,
        "generate",
        config_cls=SamplingConfig,
        help="generate text from a trained run, streamed to the terminal",
        description="Generate a continuation of PROMPT with the model in RUN_DIR, using a KV "
        "cache, streaming text as it is produced. Temperature 0 is greedy decoding.",
    )
    p.add_argument(
        "run", metavar="RUN_DIR", help="run directory (model.safetensors, config.json, tokenizer/)"
    )
    p.add_argument(
        "prompt",
        nargs="?",
        default="",
        metavar="PROMPT",
        help="text to continue ('-' reads it from standard input; empty: start of a document)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=tuple(DTYPES),
        help="weights and KV cache precision (default: float32; bfloat16 halves the memory read per token)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step with torch.compile for these weights (about a minute of compiling "
        "on a laptop CPU, then 2-3x faster tokens); needs a C++ compiler on CPU",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")
    explain = p.add_argument_group("explain options")
    explain.add_argument(
        "--explain",
        action="store_true",
        help="after the text, print each step's most likely tokens with their probabilities (chosen: →)",
    )
    explain.add_argument(
        "--explain-top",
        type=int,
        default=5,
        metavar="N",
        help="number of candidate tokens shown per step by --explain / --explain-json (default: 5)",
    )
    explain.add_argument(
        "--explain-json",
        metavar="FILE",
        default=None,
        help="write each step's chosen token, its probability and rank, and the top candidates as JSON",
    )
    explain.add_argument(
        "--attention",
        metavar="FILE.png",
        default=None,
        help="draw the attention probabilities of the prompt (as the model sees it, after EOS) as a heatmap",
    )
    explain.add_argument(
        "--attention-layer",
        type=int,
        default=None,
        metavar="L",
        help="layer drawn by --attention, from 0 (default: the last layer)",
    )
    explain.add_argument(
        "--attention-head",
        type=int,
        default=None,
        metavar="H",
        help="attention head drawn by --attention, from 0 (default: the average over heads)",
    )
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> None:
    config = from_args(SamplingConfig, args)
    model, tokenizer, device = load_run(args.run, device=args.device, threads=args.threads, dtype=args.dtype)
    decode_fn = compile_decode(model) if args.compile else None
    layer = model.config.num_layers - 1 if args.attention_layer is None else args.attention_layer
    if args.attention:
        check_attention_target(model.config, layer, args.attention_head)  # before generating, not after
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    texts = token_texts(tokenizer) if args.explain or args.explain_json or args.attention else []
    explainer = None
    if args.explain or args.explain_json:
        explainer = Explainer(texts, temperature=config.temperature, top_n=args.explain_top)
    if config.num_beams > 1 or config.n > 1:
        _several(model, tokenizer, prompt, config, device, decode_fn)
    else:
        sys.stdout.write(prompt)
        text = generate_text(
            model, tokenizer, prompt, config, device=device, on_token=explainer, decode_fn=decode_fn
        )
        for piece in text:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        g = text.generation
        print(
            f"[{g.generated_tokens} tokens, finish: {g.finish_reason}, "
            f"prompt {g.prompt_tokens_per_s:,.0f} tok/s, generation {g.tokens_per_s:,.1f} tok/s, "
            f"seed {g.seed}]",
            file=sys.stderr,
        )
    if explainer is not None and args.explain:
        sys.stdout.write("\n" + format_explain(explainer.steps) + "\n")
    if explainer is not None and args.explain_json:
        report = {"prompt": prompt, "temperature": config.temperature, "steps": explain_json(explainer.steps)}
        write_json(args.explain_json, report)
        print(f"explanation written to {args.explain_json}", file=sys.stderr)
    if args.attention:
        _plot_attention(model, tokenizer, prompt, config, texts, layer, args.attention_head, args.attention)


def _several(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    config: SamplingConfig,
    device: torch.device,
    decode_fn: DecodeFn | None,
) -> None:
    """Print the n best beams (with scores) or n samples, one after another (not streamed)."""
    ids = [tokenizer.eos_id, *tokenizer.encode(prompt)]
    eos_ids = (tokenizer.eos_id, tokenizer.end_of_turn_id)
    if config.num_beams > 1:
        for rank, hypothesis in enumerate(beam_search(model, ids, config, eos_ids=eos_ids, device=device), 1):
            print(
                f"--- beam {rank}: score {hypothesis.score:.4f}, log-probability {hypothesis.logprob:.3f}, "
                f"{len(hypothesis.token_ids)} tokens, finish: {hypothesis.finish_reason}"
            )
            print(prompt + tokenizer.decode(hypothesis.token_ids, skip_special_tokens=True))
        return
    token_bytes = tokenizer.token_bytes()
    completions = generate_batch(
        model, [ids], config, eos_ids=eos_ids, token_bytes=token_bytes, device=device, decode_fn=decode_fn
    )
    for c in completions:
        print(
            f"--- sample {c.sample + 1} (seed {c.seed}, {len(c.token_ids)} tokens, finish: {c.finish_reason})"
        )
        print(prompt + c.text)


def _plot_attention(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    config: SamplingConfig,
    texts: list[str],
    layer: int,
    head: int | None,
    path: str,
) -> None:
    # the whole encoded prompt after EOS: generation's token healing takes the last token back, but the
    # plot shows how the model reads the prompt as written
    ids = fit_prompt([tokenizer.eos_id, *tokenizer.encode(prompt)], config, model.config.context_length)
    weights = attention_weights(model, ids, layer, head)
    which = "mean over heads" if head is None else f"head {head}"
    plot_attention(weights, [texts[i] for i in ids], path, f"attention, layer {layer}, {which}")
    print(f"attention plot written to {path}", file=sys.stderr)

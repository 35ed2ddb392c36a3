"""`forge serve` (the OpenAI-compatible server and chat page) and `forge chat` (a terminal chat)."""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from forge.cli.common import DTYPES, add_command, load_run
from forge.errors import ConfigError
from forge.infer.engine import compile_decode, generate_chat
from forge.infer.sampling import SamplingConfig

CHAT_HELP = """commands:
  /reset          start a new conversation (the system message is kept)
  /system TEXT    set the system message (empty: none) and start over
  /temp X         sampling temperature (0 = greedy), e.g. /temp 0.7
  /top_p X        nucleus sampling threshold, e.g. /top_p 0.9
  /max N          most tokens per answer
  /seed N         fix the seed (/seed off: random)
  /settings       show the current settings
  /help           this list
  /quit           leave (Ctrl-D too); Ctrl-C stops the current answer"""


def register(commands: Any) -> None:
    p = add_command(
        commands,
        "serve",
        help="serve a run over an OpenAI-compatible HTTP API, with a chat page at /",
        description="Serve the model in RUN_DIR: /v1/chat/completions, /v1/completions, /v1/models "
        "(OpenAI's schemas, streaming included), /health, /metrics, and a chat page at /. Concurrent "
        "requests share the model through continuous batching.",
    )
    _run_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("FORGE_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1 requests (default: $FORGE_API_KEY; unset: open)",
    )
    p.add_argument(
        "--model-name", default=None, help="the model id clients ask for (default: the run's name)"
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default: 16)")
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests that may wait for a slot before 429 (default: 64)"
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest request body accepted (default: 1 MiB)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step and the sampler before serving (a minute or so at start; faster "
        "tokens when the batch is mostly full)",
    )
    p.set_defaults(handler=_serve)

    c = add_command(
        commands,
        "chat",
        help="chat with a run in the terminal (multi-turn, streaming)",
        description="An interactive chat with the model in RUN_DIR, using its chat template. "
        "Type /help for the commands; Ctrl-C stops an answer, Ctrl-D leaves.",
    )
    _run_arguments(c)
    c.add_argument("--system", default="", help="system message (default: none)")
    c.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    c.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (default: 0.95)")
    c.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per answer (default: 256)")
    c.add_argument("--seed", type=int, default=None, help="fix the seed for reproducible answers")
    c.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT",
        help="ask this one question, print the answer and exit (no interactive session)",
    )
    c.set_defaults(handler=_chat)


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run", metavar="RUN_DIR", help="run directory (model.safetensors, config.json, tokenizer/)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weights precision")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from forge.serve.api import Server, create_app
    from forge.serve.scheduler import Scheduler

    if args.max_batch < 1 or args.max_queue < 0 or args.max_body_bytes < 1:
        raise ConfigError("--max-batch and --max-body-bytes must be positive and --max-queue at least 0")
    model, tokenizer, _ = load_run(args.run, device=args.device, threads=args.threads, dtype=args.dtype)
    decode_fn = compile_decode(model) if args.compile else None
    eos_ids = (tokenizer.eos_id, tokenizer.end_of_turn_id)
    scheduler = Scheduler(
        model,
        tokenizer.token_bytes(),
        eos_ids,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        decode_fn=decode_fn,
    )
    if decode_fn is not None:
        print(
            "forge: compiling the decode step and the sampler (a minute or so)", file=sys.stderr, flush=True
        )
        scheduler.warm_up()
    name = args.model_name or Path(args.run).resolve().name
    server = Server(scheduler, tokenizer, name, api_key=args.api_key)
    app = create_app(server, max_body_bytes=args.max_body_bytes)
    scheduler.start()
    where = f"http://{args.host}:{args.port}"
    key = "API key required" if args.api_key else "no API key (open to anyone who can reach it)"
    print(f"forge: serving {name!r} at {where} (chat page at {where}/), {key}", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        scheduler.stop()


def _chat(args: argparse.Namespace) -> None:
    model, tokenizer, _ = load_run(args.run, device=args.device, threads=args.threads, dtype=args.dtype)
    settings: dict[str, Any] = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }
    SamplingConfig(**settings)  # a bad flag is refused before the chat starts
    system = args.system
    if args.prompt is not None:  # one exchange, printed, for scripts and demos
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        print("".join(generate_chat(model, tokenizer, messages, SamplingConfig(**settings))))
        return
    history: list[dict[str, str]] = []
    print(f"forge chat with {Path(args.run).resolve().name} (/help for commands, Ctrl-D to leave)")
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /quit leaves)")
            continue
        if not line:
            continue
        if line.startswith("/"):
            command, _, value = line.partition(" ")
            if command in ("/quit", "/exit"):
                return
            if command == "/system":
                system, history = value.strip(), []
                print("(system message set; new conversation)")
                continue
            try:
                history = _command(command, value.strip(), settings, history)
            except (ValueError, ConfigError) as e:
                print(f"({e})")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        answer = generate_chat(model, tokenizer, messages, SamplingConfig(**settings))
        print("model> ", end="", flush=True)
        text = ""
        try:
            for piece in answer:
                text += piece
                print(piece, end="", flush=True)
            g = answer.generation
            print(f"\n[{g.generated_tokens} tokens, {g.tokens_per_s:.1f} tok/s, {g.finish_reason}]")
        except KeyboardInterrupt:
            print("\n[stopped]")
        history.append({"role": "assistant", "content": text})


def _command(
    command: str, value: str, settings: dict[str, Any], history: list[dict[str, str]]
) -> list[dict[str, str]]:
    """Apply a /command to `settings`; returns the (possibly emptied) history."""
    names = {"/temp": ("temperature", float), "/top_p": ("top_p", float), "/max": ("max_new_tokens", int)}
    if command == "/reset":
        print("(new conversation)")
        return []
    if command == "/help":
        print(CHAT_HELP)
    elif command == "/settings":
        print("(" + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")")
    elif command == "/seed":
        settings["seed"] = None if value in ("", "off") else int(value)
        print(f"(seed {settings['seed']})")
    elif command in names:
        key, kind = names[command]
        candidate = dict(settings, **{key: kind(value)})
        SamplingConfig(**candidate)  # refuses out-of-range values with a message
        settings.update(candidate)
        print(f"({key} {settings[key]})")
    else:
        print(f"(unknown command {command}; /help lists them)")
    return history

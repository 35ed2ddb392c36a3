"""`forge label serve|synth|export|import`: collect preference judgements, from people or from a rule."""

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from forge.align.formats import prompt_key, read_prompts
from forge.align.preferences import PreferenceStore
from forge.align.sample_pairs import PairConfig, report_path, sample_pairs, synthesize
from forge.cli.common import DTYPES, add_command, load_run
from forge.config import from_args
from forge.errors import ConfigError, DataError


def register(commands: Any) -> None:
    group = commands.add_parser(
        "label",
        help="collect preference judgements: a labelling page, synthetic pairs, import and export",
        description="Collect preference judgements (which of two answers is better) in a SQLite database: "
        "from people on a local web page (serve), or from a readable rule that stands in for them "
        "(synth); move them in and out as preference JSONL (export, import).",
    )
    sub = group.add_subparsers(dest="label_command", metavar="COMMAND", required=True, help="what to do")

    p = add_command(
        sub,
        "serve",
        config_cls=PairConfig,
        help="sample answer pairs for prompts and serve a page where people pick the better answer",
        description="Sample two answers per prompt of --prompts with the model in RUN_DIR (before serving: "
        "the answers are pre-generated and stored in --db as pairs to judge), then serve a page where "
        "people pick A, B, tie or both bad with the keyboard, or write a better answer. Prompts that "
        "already have pairs from this model are not sampled again; without --prompts the pairs already "
        "in --db are served. Votes are saved at once, safely with several people labelling together.",
    )
    _run_arguments(p, required=False)
    p.add_argument("--prompts", metavar="FILE", default=None, help=PROMPTS_HELP)
    _db_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)")
    p.add_argument("--port", type=int, default=8001, help="port (default: 8001)")
    p.add_argument(
        "--labeller",
        default=_user(),
        help="name shown in the page's labeller field, which each person can change (default: $USER)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("FORGE_API_KEY"),
        help="require this key (typed in the page) for every vote (default: $FORGE_API_KEY; unset: open)",
    )
    p.add_argument(
        "--votes-per-pair", type=int, default=1, help="people asked to judge each pair (default: 1)"
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=300.0,
        help="how long a pair shown to one person is kept from the others (default: 300)",
    )
    p.set_defaults(handler=_serve)

    p = add_command(
        sub,
        "synth",
        config_cls=PairConfig,
        help="build preference pairs without people, from a readable rule (a stand-in for human votes)",
        description="Sample two answers per prompt with the model in RUN_DIR, judge each with the rule of "
        "forge.align.rule (for 'write a function' prompts: valid Python that defines the asked function, "
        "finished rather than cut at the token limit, not repetitive; for 'explain' prompts: finished, "
        "names the function, not repetitive), and write the pairs it separates as preference JSONL, with "
        "a report next to it (OUT.report.json). These stand in for human judgements.",
    )
    _run_arguments(p, required=True)
    p.add_argument("--prompts", metavar="FILE", required=True, help=PROMPTS_HELP)
    p.add_argument(
        "--out", metavar="FILE", default="prefs.jsonl", help="preference JSONL written (default: prefs.jsonl)"
    )
    p.add_argument(
        "--every-pair",
        action="store_true",
        help="compare every two answers sampled for a prompt, not only the pairs as sampled: with "
        "--pairs-per-prompt K, 2K answers give K(2K-1) comparisons instead of K",
    )
    p.add_argument(
        "--renamed",
        action="store_true",
        help="also write a contrast pair for each answer the rule passes: that answer against its copy with "
        'the asked function\'s name replaced by a near miss (marked "origin": "renamed"), so a reward model '
        "learns to check the name",
    )
    p.set_defaults(handler=_synth)

    p = add_command(
        sub,
        "export",
        help="write the judgements of a preference database as preference JSONL",
        description="Write the judgements in --db as preference JSONL ({prompt, chosen, rejected}): A better "
        "gives chosen A, rejected B; B better the reverse; ties and 'both bad' are left out; a written "
        "better answer is chosen against each of A and B.",
    )
    _db_argument(p)
    p.add_argument("--out", metavar="FILE", required=True, help="preference JSONL to write")
    p.set_defaults(handler=_export)

    p = add_command(
        sub,
        "import",
        help="add a preference JSONL dataset to a preference database",
        description="Read FILE ({prompt, chosen, rejected} per line; prompt: chat messages or a string), "
        "check every line, and add it to --db as judgements (all or nothing; records already there are "
        "not added twice).",
    )
    p.add_argument("file", metavar="FILE", help="preference JSONL to read")
    _db_argument(p)
    p.add_argument(
        "--labeller", default=None, help="labeller recorded for these judgements (default: import:FILE)"
    )
    p.set_defaults(handler=_import)


PROMPTS_HELP = (
    'prompts, JSONL: {"messages": [...]} per line (a last assistant turn is dropped, so `forge data '
    'synth-sft` output works) or {"prompt": "text"}'
)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _run_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "run",
        nargs=None if required else "?",
        default=None,
        metavar="RUN_DIR",
        help="run directory whose model writes the answers (model.safetensors, config.json, tokenizer/)",
    )
    p.add_argument(
        "--model-name", default=None, help="model id stored with the pairs (default: the run's name)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weights precision")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")


def _db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="FILE",
        default="preferences.db",
        help="SQLite preference database (default: preferences.db)",
    )


def _model_id(args: argparse.Namespace) -> str:
    return str(args.model_name or Path(args.run).resolve().name)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from forge.serve.label import create_label_app

    config = from_args(PairConfig, args)
    if args.votes_per_pair < 1 or args.lease_seconds <= 0:
        raise ConfigError("--votes-per-pair must be at least 1 and --lease-seconds positive")
    if args.prompts and not args.run:
        raise ConfigError(
            "--prompts needs RUN_DIR, the model that answers them: forge label serve RUN_DIR ..."
        )
    prompts = read_prompts(args.prompts) if args.prompts else []  # a bad file fails before the model loads
    store = PreferenceStore(args.db, votes_per_pair=args.votes_per_pair, lease_seconds=args.lease_seconds)
    if prompts:
        model_id = _model_id(args)
        prompts = prompts[: config.limit] if config.limit else prompts
        have = store.prompts_with_pairs(model_id)
        todo = [p for p in prompts if prompt_key(p) not in have]
        print(
            f"forge: {len(prompts) - len(todo)} of {len(prompts)} prompts already have pairs in {args.db}; "
            f"sampling pairs for {len(todo)}",
            file=sys.stderr,
        )
        if todo:
            model, tokenizer, _ = load_run(
                args.run, device=args.device, threads=args.threads, dtype=args.dtype
            )
            sampled, skipped = sample_pairs(model, tokenizer, todo, config, model_id=model_id)
            store.add_pairs(s.pair for s in sampled)
            if skipped:
                print(f"forge: skipped {dict(skipped)}", file=sys.stderr)
            del model
    progress = store.progress()
    if progress["pairs"] == 0:
        raise DataError(f"{args.db} holds no pairs to judge; give RUN_DIR --prompts FILE to sample some")
    name = _model_id(args) if args.run else Path(args.db).name
    app = create_label_app(store, model_id=name, default_labeller=args.labeller, api_key=args.api_key)
    where = f"http://{args.host}:{args.port}/"
    print(
        f"forge: labelling page at {where} ({progress['done']} of {progress['pairs']} pairs judged; "
        f"votes go to {args.db}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)


def _synth(args: argparse.Namespace) -> None:
    config = from_args(PairConfig, args)
    prompts = read_prompts(args.prompts)
    prompts = prompts[: config.limit] if config.limit else prompts
    model, tokenizer, _ = load_run(args.run, device=args.device, threads=args.threads, dtype=args.dtype)
    sampled, skipped = sample_pairs(model, tokenizer, prompts, config, model_id=_model_id(args))
    report = synthesize(
        sampled,
        args.out,
        prompts=len(prompts),
        skipped=skipped,
        config=config,
        every_pair=args.every_pair,
        renamed=args.renamed,
    )
    kinds = ", ".join(f"{kind} {rate:.0%}" for kind, rate in report["pass_rate_by_kind"].items())
    print(
        f"prompts {report['prompts']} · pairs sampled {report['pairs_sampled']} · compared "
        f"{report['pairs_compared']} · kept {report['pairs_kept']}"
        f" · ties skipped {report['ties_skipped']}"
        + (f" · renamed contrast pairs {report['renamed_pairs']}" if args.renamed else "")
        + (f" · not sampled {report['skipped']}" if report["skipped"] else "")
    )
    print(f"answers passing the rule: {report['pass_rate']:.0%} ({kinds or 'none'})")
    if report["failed_checks"]:
        print("failed checks: " + ", ".join(f"{k} {v}" for k, v in report["failed_checks"].items()))
    print(
        f"wrote {args.out} and {report_path(args.out)}; a readable rule chose these pairs, standing in for "
        "human judgements"
    )


def _export(args: argparse.Namespace) -> None:
    if not Path(args.db).is_file():
        raise DataError(f"{args.db}: no such database; collect votes with `forge label serve` or import some")
    counts = PreferenceStore(args.db).export_jsonl(args.out)
    print(
        f"wrote {counts['written']} preference pairs to {args.out} from {counts['judgements']} judgements "
        f"({counts['ties']} ties and {counts['both_bad']} 'both bad' left out; {counts['edits']} edited "
        "answers)"
    )


def _import(args: argparse.Namespace) -> None:
    counts = PreferenceStore(args.db).import_jsonl(args.file, labeller=args.labeller)
    print(
        f"read {counts['records']} preference pairs from {args.file}: {counts['added']} added to {args.db}, "
        f"{counts['already_present']} already there"
    )

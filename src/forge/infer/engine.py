"""The inference engine: prompt ids → a stream of new ids (and text), with a KV cache.

Design choices (after gpt-fast):
- two small pure functions do the model work, each testable and compilable alone: `prefill` runs the
  whole prompt once and fills the cache, `decode_one_token` feeds one token at its position and returns
  the logits of the next; `forge.infer.sampling.sample` picks the token;
- the cache is allocated once per request for prompt + max_new_tokens tokens, capped at the model's
  context, so decoding never reallocates; with a compiled decode step its length is rounded up to a
  power of two (`cache_length`), so requests share a handful of compiled shapes instead of compiling
  for each length, while short requests do not read a context-long cache at every step;
- `compile_decode` compiles the decode step for a model whose weights no longer change: inductor with
  frozen weights (constants folded and prepacked), autotuned matmuls and, on CPU, a C++ wrapper that
  launches the kernels without the Python interpreter and the projections that share an input (q/k/v,
  gate/up) concatenated into one matmul each. At batch 1 a token is a few dozen small matmuls
  and a few hundred tiny ops, so eager PyTorch spends most of its time dispatching; compiled, the step
  is the matmuls alone (numbers in bench/results/generate.json);
- generation ends, with `finish_reason`, on an end-of-sequence id ("stop"; the id is not yielded), after
  `max_new_tokens` ("length"), or when the context is full ("length"): no sliding window, the model is
  never asked about positions it was not trained on;
- `Generation` is an iterator of ids that keeps its own `torch.Generator` (reproducible with a seed) and
  records finish reason and speeds; model calls run under `torch.inference_mode()` step by step, never
  across a `yield`, so the caller's code between tokens keeps its own autograd mode;
- `generate_text` starts the prompt with EOS, the token that precedes every document in pretraining
  shards (shards hold documents each followed by EOS; BOS never occurs there), and stops on EOS or
  end-of-turn; its text pieces come from `forge.infer.detok.StreamDecoder`, whole characters only;
- token healing in `generate_text`: a prompt that ends inside what would be one token ("def " where the
  tokenizer attaches the space to the next word) puts the model where training never did. The last
  prompt token is taken back and the first new token must start with its bytes, so "def " continues as
  " name(" would have been tokenized; those bytes are not emitted again.
"""

import os
import secrets
import time
import types
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from forge.errors import ForgeError
from forge.infer.detok import StopStrings, StreamDecoder
from forge.infer.fused_sample import compiled_sample
from forge.infer.kv_cache import KVCache
from forge.infer.sampling import SamplingConfig, TokenStats, sample
from forge.tokenizer.chat import fit_messages, render

if TYPE_CHECKING:
    from forge.model.transformer import Transformer
    from forge.tokenizer.bpe import Tokenizer

FinishReason = Literal["stop", "length"]
DecodeFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, KVCache], torch.Tensor]


def prefill(
    model: nn.Module, input_ids: torch.Tensor, cache: KVCache, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Run prompts (B, T) at positions 0..T-1, filling `cache`; return each row's last logits (B, V).

    Prompts of different lengths are right-padded to T and `lengths` (B,) gives the real ones: a row's
    padding lands in cache slots after its prompt, which its decode steps overwrite before reading them.
    """
    B, T = input_ids.shape
    positions = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, T), one row shared by all
    logits = model(input_ids, positions=positions, cache=cache)  # (B, T, V)
    if lengths is None:
        return logits[:, -1]
    return logits[torch.arange(B, device=logits.device), lengths - 1]  # (B, V)


def cache_length(needed: int, context_length: int, *, bucketed: bool = False) -> int:
    """Cache slots for a request that reaches `needed` tokens: exactly that, or with `bucketed` the next
    power of two (at least 64), never more than the context."""
    if bucketed:
        needed = max(64, 1 << (needed - 1).bit_length())
    return min(needed, context_length)


def compile_decode(model: nn.Module, *, autotune: bool = True) -> "DecodeFn":
    """`decode_one_token` compiled for `model` as it is now (its weights are frozen into the code).

    The first call at each batch size and cache length compiles (tens of seconds on a laptop CPU, a
    few of them benchmarking matmul kernels when `autotune`); later calls with a cache of the same shape
    reuse the code. Changing the weights or modules afterwards (training, loading) does not reach the
    compiled step: compile again. Since the model is fixed, dynamo's guards on its modules are skipped
    (they cost 0.2 ms a call, measured on `small`); the guards on the inputs (token, positions, cache
    shapes) remain, so a new shape still compiles anew. The inductor settings are put in place only for
    calls that may compile (an input layout not seen before), since patching them costs 29 µs a call.
    Needs a C++ compiler on CPU, as inductor does.
    """
    import torch._inductor.config as inductor_config

    options: dict[str, bool | int] = {"freezing": True, "max_autotune": autotune}
    # autotuning prints a table per matmul shape to stderr (dozens of lines in the middle of `forge
    # generate`'s output); quiet unless asked for through inductor's own environment variables
    for key, variable, quiet in [
        ("autotune_num_choices_displayed", "TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED", 0),
        ("max_autotune_report_choices_stats", "TORCHINDUCTOR_MAX_AUTOTUNE_REPORT_CHOICES_STATS", False),
    ]:
        if hasattr(inductor_config, key) and variable not in os.environ:  # older torch lacks some
            options[key] = quiet
    if next(model.parameters()).device.type == "cpu":
        options["cpp_wrapper"] = True  # no CUDA graphs on GPU: caches differ between requests
        # q/k/v, and gate/up, read as one matrix each: fewer, longer weight streams per layer (off by
        # default in inductor; measured 6% more tokens/s on `small` and `base` at batch 1, and a faster
        # compile)
        options["cpp.enable_concat_linear"] = True
    # dynamo keeps its compiled code on the function's code object, and with the module guards skipped
    # nothing tells two models of one shape apart: a second model would run the first one's frozen
    # weights. A fresh code object per call gives each compiled step a cache of its own.
    own_step = types.FunctionType(
        decode_one_token.__code__.replace(), decode_one_token.__globals__, decode_one_token.__name__
    )
    compiled = torch.compile(
        own_step,
        fullgraph=True,
        dynamic=False,
        options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe},  # model is fixed
    )

    compiled_for: set[tuple] = set()  # the input layouts that have code already

    def step(other: nn.Module, token: torch.Tensor, position: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if other is not model:  # its weights are constants of the compiled code: never run it on another
            raise ValueError("this compiled decode step belongs to another model; call compile_decode(model)")
        # what dynamo's guards on the inputs and global state look at
        layout = tuple(
            (t.shape, t.stride(), t.dtype, t.device, t.is_inference(), t.requires_grad)
            for t in (token, position, cache.keys[0])
        ) + (torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.get_num_threads())
        if layout in compiled_for:
            # a known layout skips the settings below (29 µs a call, 2% of a `small` step); should a guard
            # still fail, the stance refuses to compile without them and the call goes the slow way
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    return compiled(other, token, position, cache)
            except RuntimeError as error:
                if "Detected recompile" not in str(error):
                    raise
        # the settings must hold whenever a compile happens (the first call at each shape); passed as
        # torch.compile(options=...) they were measured to lose the frozen, autotuned matmuls
        with inductor_config.patch(options):
            logits = compiled(other, token, position, cache)
        compiled_for.add(layout)
        return logits

    return step


def decode_one_token(
    model: nn.Module, token: torch.Tensor, position: torch.Tensor, cache: KVCache
) -> torch.Tensor:
    """Feed tokens (B,) at positions (B,), adding them to `cache`; return the next-token logits (B, V)."""
    logits = model(token[:, None], positions=position[:, None], cache=cache)  # (B, 1, V)
    return logits[:, -1]


class Generation:
    """One request in progress: iterate it for new token ids; `finish_reason` and speeds are set at the end.

    Attributes: `prompt_tokens`, `generated_tokens`, `finish_reason` ("stop" | "length", None until the
    end), `seed` (the one used, to reproduce a sample), `prompt_tokens_per_s` (the prefill's forward
    pass) and `tokens_per_s` (the decode steps after the first, since the first one compiles when the
    step is compiled; time the caller spends between tokens is not counted). A compiled sampler compiles
    on its first call, which neither counts.
    """

    def __init__(
        self,
        model: "Transformer",
        prompt_ids: list[int],
        config: SamplingConfig,
        *,
        eos_ids: Collection[int],
        device: torch.device,
        first_token_mask: torch.Tensor | None = None,
        on_token: Callable[[torch.Tensor, int], None] | None = None,
        decode_fn: DecodeFn | None = None,
    ) -> None:
        self.model, self.config, self.device = model, config, device
        self.eos_ids = frozenset(eos_ids) if config.stop_on_eos else frozenset()
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.generated_tokens = 0
        self.output_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.prompt_tokens_per_s = 0.0
        self.tokens_per_s = 0.0
        self.decode_fn = decode_fn or decode_one_token  # e.g. compile_decode(model), from outside
        self.static_cache = decode_fn is not None  # a custom (compiled) step gets bucketed cache shapes
        # a compiled step comes with the compiled sampler
        self.sample_fn = compiled_sample if decode_fn is not None else sample
        self.on_token = on_token  # called with the raw logits (V,) of each step and the id chosen
        self.first_token_mask = first_token_mask  # (V,) bool: the tokens allowed first (token healing)
        self.seed = secrets.randbits(63) if config.seed is None else config.seed  # recorded, to replay
        self.generator = torch.Generator(device=device).manual_seed(self.seed)
        # token statistics for the repetition / presence / frequency penalties, kept only when used
        self.stats: TokenStats | None = None
        if config.repetition_penalty != 1.0 or config.presence_penalty or config.frequency_penalty:
            self.stats = TokenStats(1, model.config.vocab_size, device)
            self.stats.start(0, prompt_ids)
        self._ids = self._run()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return next(self._ids)

    @torch.inference_mode()
    def _prefill(self) -> torch.Tensor:
        """Allocate the cache, run the prompt; return the logits of the first new token (1, V)."""
        needed = self.prompt_tokens + self.config.max_new_tokens
        max_seq_len = cache_length(needed, self.model.config.context_length, bucketed=self.static_cache)
        self.cache = KVCache.for_model(self.model, batch_size=1, max_seq_len=max_seq_len)
        prompt = torch.tensor([self.prompt_ids], dtype=torch.long, device=self.device)  # (1, P)
        logits = prefill(self.model, prompt, self.cache)  # (1, V)
        if self.first_token_mask is not None:
            logits = logits.masked_fill(~self.first_token_mask.to(logits.device), float("-inf"))
        return logits

    @torch.inference_mode()
    def _decode(self, token_id: int, position: int) -> int:
        """Feed `token_id` at `position`, sample the token after it."""
        token = torch.tensor([token_id], dtype=torch.long, device=self.device)  # (1,)
        at = torch.tensor([position], dtype=torch.long, device=self.device)  # (1,)
        logits = self.decode_fn(self.model, token, at, self.cache)  # (1, V)
        return self._pick(logits)

    @torch.inference_mode()  # as in `_decode`: a compiled sampler is compiled for one mode only
    def _pick(self, logits: torch.Tensor) -> int:
        if self.generated_tokens < self.config.min_new_tokens and self.eos_ids:
            logits = logits.clone()
            logits[:, sorted(self.eos_ids)] = float("-inf")
        seen, counts = (self.stats.seen, self.stats.counts) if self.stats is not None else (None, None)
        token_id = int(self.sample_fn(logits, self.config, self.generator, seen=seen, counts=counts))
        if self.stats is not None:
            self.stats.add(0, token_id)
        if self.on_token is not None:
            self.on_token(logits[0], token_id)
        return token_id

    def _run(self) -> Iterator[int]:
        started = time.perf_counter()
        logits = self._prefill()
        self.prompt_tokens_per_s = self.prompt_tokens / (time.perf_counter() - started)
        token_id = self._pick(logits)
        position = self.prompt_tokens  # where token_id would be fed
        steps, seconds, first_step = 0, 0.0, 0.0  # the decode steps after the first, and their time
        while token_id not in self.eos_ids:
            self.generated_tokens += 1
            self.output_ids.append(token_id)
            yield token_id
            if self.generated_tokens == self.config.max_new_tokens or position == self.cache.max_seq_len:
                self.finish_reason = "length"
                return
            started = time.perf_counter()
            token_id = self._decode(token_id, position)
            elapsed = time.perf_counter() - started
            if position == self.prompt_tokens:
                first_step = elapsed
            else:
                steps, seconds = steps + 1, seconds + elapsed
            position += 1
            self.tokens_per_s = steps / seconds if steps else 1 / first_step  # decode steps so far
        self.finish_reason = "stop"


def fit_prompt(prompt_ids: list[int], config: SamplingConfig, context_length: int) -> list[int]:
    """The prompt, left-truncated to fit the context when `config.truncate_prompt` asks for it.

    Truncation keeps the most recent tokens and leaves room for `max_new_tokens` when it can, but always
    keeps at least half the context of prompt.
    """
    if len(prompt_ids) <= context_length or not config.truncate_prompt:
        return prompt_ids
    keep = max(context_length - config.max_new_tokens, (context_length + 1) // 2)
    return prompt_ids[-keep:]


def prepare_prompt(model: "Transformer", prompt_ids: list[int], config: SamplingConfig) -> list[int]:
    """`fit_prompt` then `check_prompt` against the model's context and vocabulary."""
    prompt_ids = fit_prompt(prompt_ids, config, model.config.context_length)
    check_prompt(prompt_ids, model.config.context_length, model.config.vocab_size)
    return prompt_ids


def model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """`device` as a torch.device, or the device of the model's weights when None."""
    return next(model.parameters()).device if device is None else torch.device(device)


def check_prompt(prompt_ids: list[int], context_length: int, vocab_size: int) -> None:
    """Raise a ForgeError for an empty prompt, one longer than the context, or ids outside the vocabulary."""
    if not prompt_ids:
        raise ForgeError("the prompt has no tokens; give at least one (e.g. start it with the EOS/BOS id)")
    if len(prompt_ids) > context_length:
        raise ForgeError(
            f"the prompt has {len(prompt_ids)} tokens but the model's context holds {context_length}; "
            f"shorten the prompt by at least {len(prompt_ids) - context_length} tokens (leaving room "
            "for the --max-new-tokens you want generated), or pass --truncate-prompt to keep its end"
        )
    bad = [i for i in prompt_ids if not 0 <= i < vocab_size]
    if bad:
        raise ForgeError(
            f"prompt token ids {bad[:5]} are outside the model's vocabulary of {vocab_size}; "
            "was the prompt encoded with the tokenizer this model was trained with?"
        )


def generate_ids(
    model: "Transformer",
    prompt_ids: list[int],
    config: SamplingConfig,
    *,
    eos_ids: Collection[int] = (),
    device: torch.device | str | None = None,
    decode_fn: DecodeFn | None = None,
) -> Generation:
    """Continue `prompt_ids` (at least one id); the returned `Generation` yields the new ids one by one.

    Stops at any of `eos_ids` (not yielded; only if `config.stop_on_eos`), after `config.max_new_tokens`,
    or when the model's context is full. `device` defaults to the model's; `decode_fn` replaces the
    eager decode step (e.g. `compile_decode(model)`).
    """
    prompt_ids = prepare_prompt(model, prompt_ids, config)
    device = model_device(model, device)
    return Generation(model, prompt_ids, config, eos_ids=eos_ids, device=device, decode_fn=decode_fn)


class TextGeneration:
    """Iterate for text pieces (whole characters); `generation` holds the ids' finish reason and speeds."""

    def __init__(self, generation: Generation, token_bytes: list[bytes], *, skip_prefix: bytes = b"") -> None:
        self.generation = generation
        self.stop_string: str | None = None  # the stop string that ended the text, if one did
        self._pieces = self._run(StreamDecoder(token_bytes, skip_prefix=skip_prefix))

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self, decoder: StreamDecoder) -> Iterator[str]:
        stops = StopStrings(self.generation.config.stop) if self.generation.config.stop else None
        for token_id in self.generation:
            text = decoder.push(token_id)
            if stops is not None:
                text = stops.push(text)
            if text:
                yield text
            if stops is not None and stops.stopped:
                self.generation.finish_reason, self.stop_string = "stop", stops.matched
                return
        text = decoder.flush()
        if stops is not None:
            text = stops.finish(text)
            if stops.stopped:
                self.generation.finish_reason, self.stop_string = "stop", stops.matched
        if text:
            yield text


def generate_text(
    model: "Transformer",
    tokenizer: "Tokenizer",
    prompt: str,
    config: SamplingConfig,
    *,
    device: torch.device | str | None = None,
    heal: bool = True,
    on_token: Callable[[torch.Tensor, int], None] | None = None,
    decode_fn: "DecodeFn | None" = None,
) -> TextGeneration:
    """Continue the text `prompt` as a new document; yields the generated text piece by piece.

    With `heal` (the default) the prompt's last token is regenerated under the constraint that it starts
    with the same bytes (see the module docstring); the text yielded never repeats the prompt.
    """
    ids = tokenizer.encode(prompt)
    token_bytes = tokenizer.token_bytes()
    healed, mask = b"", None
    if heal and ids:
        healed = token_bytes[ids.pop()]
        mask = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        mask[[i for i, b in enumerate(token_bytes) if b.startswith(healed)]] = True
    prompt_ids = prepare_prompt(model, [tokenizer.eos_id, *ids], config)  # EOS: a new document starts
    eos_ids = (tokenizer.eos_id, tokenizer.end_of_turn_id)
    device = model_device(model, device)
    generation = Generation(
        model,
        prompt_ids,
        config,
        eos_ids=eos_ids,
        device=device,
        first_token_mask=mask,
        on_token=on_token,
        decode_fn=decode_fn,
    )
    return TextGeneration(generation, token_bytes, skip_prefix=healed)


def generate_chat(
    model: "Transformer",
    tokenizer: "Tokenizer",
    messages: list[dict[str, str]],
    config: SamplingConfig,
    *,
    device: torch.device | str | None = None,
    on_token: Callable[[torch.Tensor, int], None] | None = None,
    decode_fn: "DecodeFn | None" = None,
) -> TextGeneration:
    """The assistant's answer to `messages`, streamed; ends at the end-of-turn token.

    The conversation is rendered with the chat template after dropping the oldest turns that do not fit
    beside the answer (the system message is always kept): the prompt gets the context less
    `max_new_tokens`, but at least half of it.
    """
    context = model.config.context_length
    budget = context - min(config.max_new_tokens, context // 2)
    ids, _ = render(tokenizer, fit_messages(tokenizer, messages, budget), add_generation_prompt=True)
    eos_ids = (tokenizer.eos_id, tokenizer.end_of_turn_id)
    device = model_device(model, device)
    generation = Generation(
        model, ids, config, eos_ids=eos_ids, device=device, on_token=on_token, decode_fn=decode_fn
    )
    return TextGeneration(generation, tokenizer.token_bytes())

"""The one list of special tokens.

Every tokenizer forge trains gives these tokens the ids 0..6, in this order, so a model, a chat template
and a shard file agree on them without looking anything up. EOS doubles as the document separator in
token shards and as the end of generation.
"""

BOS = "<|bos|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"

SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN)

"""Tiny shared data of the alignment tests: a model shape and preference pairs that one token separates."""

import random

from forge.model.config import ModelConfig

CONFIG = ModelConfig(vocab_size=320, context_length=64, dim=48, num_layers=2, num_heads=4, num_kv_heads=2)
THINGS = ["apple", "river", "stone", "cloud", "tiger", "lamp", "bread", "ship", "garden", "clock"]


def preference_pairs(count: int = 40, words: int = 5) -> list[dict]:
    """Answers are random words; the chosen one says "thanks" somewhere, the rejected one does not. Only
    that token separates them, so an untrained model is near chance."""
    rng = random.Random(0)
    pairs = []
    for i in range(count):
        prompt = f"tell me about the {THINGS[i % len(THINGS)]}, number {i}."
        chosen, rejected = rng.choices(THINGS, k=words), rng.choices(THINGS, k=words)
        chosen.insert(rng.randrange(words + 1), "thanks")
        pairs.append({"prompt": prompt, "chosen": " ".join(chosen), "rejected": " ".join(rejected)})
    return pairs

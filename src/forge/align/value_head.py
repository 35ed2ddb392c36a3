"""The model PPO trains (`forge.align.ppo`): a policy with a value head on its own hidden states."""

import torch
from torch import Tensor, nn

from forge.model.config import ModelConfig
from forge.model.transformer import Transformer


class PolicyWithValue(Transformer):
    """The policy with a scalar value head on its final hidden states.

    A shared body, as TRL's `AutoModelForCausalLMWithValueHead`: one forward gives logits and values.
    Subclassing `Transformer` keeps the policy's weight names (plus `value_head.*`), so training
    checkpoints, LoRA and the inference engine take it as they take the policy.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.value_head = nn.Linear(config.dim, 1)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: a neutral baseline
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_policy(cls, policy: Transformer) -> "PolicyWithValue":
        """A copy of `policy`'s weights with a fresh value head, on the policy's device."""
        with torch.device(next(policy.parameters()).device):
            model = cls(policy.config)
        missing, unexpected = model.load_state_dict(policy.state_dict(), strict=False)
        assert set(missing) == {"value_head.weight", "value_head.bias"} and not unexpected
        return model

    def forward_with_values(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """input_ids (B, T) → logits (B, T, V) and values (B, T), both float32."""
        hidden = self.hidden_states(input_ids)  # (B, T, C)
        return self.lm_head(hidden).float(), self.value_head(hidden).squeeze(-1).float()

    def policy(self) -> Transformer:
        """The policy alone, as a plain `Transformer` (for `save_model`), sharing no storage."""
        state = {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("value_")}
        with torch.device(next(self.parameters()).device):
            policy = Transformer(self.config)
        policy.load_state_dict(state)
        return policy

"""Turn conversations into token ids with the model's own chat template.

Owns: the system-role fallback (templates that reject or ignore a system turn get the steering message
merged into the first user turn), a prompt's token ids (tokenised in remembered pieces, `pieces`), and the
token ids of a response that a scorer appends after a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ssogen.errors import UsageError
from ssogen.inputs.pieces import PieceTokenizer

Message = dict[str, str]


class ChatFormat:
    """Renders conversations for one tokenizer; knows whether it accepts a system turn."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError(
                "--model: the tokenizer has no chat template; SSO needs an instruct/chat model "
                "(its tokenizer_config.json or chat_template.jinja must define one)."
            )
        self.supports_system = self._probe_system_role()
        self.eos_token_id: int | None = tokenizer.eos_token_id
        self.pieces = PieceTokenizer(tokenizer)

    def _probe_system_role(self) -> bool:
        marker = "SSOGEN-SYSTEM-PROBE"
        try:
            text = self.tokenizer.apply_chat_template(
                [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:
            return False
        return marker in text

    def with_system(self, system: str | None, messages: list[Message]) -> list[Message]:
        """Put the steering message first, or into the first user turn when the template has no system role."""
        if not system:
            return list(messages)
        if self.supports_system:
            return [{"role": "system", "content": system}, *messages]
        merged = [dict(m) for m in messages]
        first_user = next(i for i, m in enumerate(merged) if m["role"] == "user")
        merged[first_user]["content"] = f"{system}\n\n{merged[first_user]['content']}"
        return merged

    def prompt_text(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, messages: list[Message], answer_prefix: str = "", vary: Sequence[str] = ()) -> list[int]:
        """Token ids of the conversation, the assistant's generation prompt, and the answer's given start.

        ``vary`` names the parts of a turn that change from call to call (the query inside a fixed template),
        so the text before them is tokenised once.
        """
        # The template text already holds any BOS token, so the tokenizer must not add another.
        return self.pieces.encode(self.prompt_text(messages) + answer_prefix, vary)

    def response_ids(self, text: str, finished: bool) -> list[int]:
        """Token ids of an answer as a scorer sees it: its text, plus end-of-sequence when it ended by itself."""
        ids = self.pieces.whole(text)
        if finished and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

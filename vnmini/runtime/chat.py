"""A multi-turn chat over any :class:`vnmini.runtime.generator.Generator` (torch, GGUF, ONNX).

It owns the conversation: the optional system prompt, the turns so far, the
chat template (the tokenizer's, the same string the GGUF carries), fitting the
prompt into the context window, and the sampling options. ``vnmini chat`` is a
thin terminal loop around it; a GUI or a bot would use it the same way.

    session = ChatSession(vnmini.load("runs/quickstart/chat"), system_prompt="Trả lời ngắn gọn.")
    events = session.send("Luật Dân sự quy định gì?")
    if session.dropped_turns:                  # set before the first token
        print(f"(dropped {session.dropped_turns} old turns to fit the context)")
    for ev in events:
        print(ev.text, end="", flush=True)
    session.reset()                            # forget the turns, keep the system prompt

Context window: before each answer the whole conversation is rendered and
tokenized; while prompt + ``max_new_tokens`` exceeds the model's context, the
oldest user/assistant pair is dropped (the system prompt always stays) and
``dropped_turns`` says how many went. If the new message alone leaves less
room than ``max_new_tokens``, the answer is simply capped by what is left; if it
does not fit at all, :class:`VnminiError` asks to shorten it.

Stopping an answer early (Ctrl-C in the terminal, or a GUI's stop button):
close the iterator (``events.close()``), or let an exception such as
KeyboardInterrupt propagate out of the loop. The partial answer is **kept** in
the history — the user saw it, so the model should too; ``last_interrupted``
tells that it happened. Text is normalized (NFC, one tone placement) by the
tokenizer when the template is rendered, so NFD or old-style-tone input gives
the same ids as clean input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vnmini.errors import VnminiError
from vnmini.runtime.generator import Generator, TokenEvent
from vnmini.runtime.sampling import DEFAULTS, SamplingOptions


class ChatSession:
    """History + template + context fitting + sampling for one conversation (see module docstring)."""

    def __init__(
        self,
        generator: Generator,
        system_prompt: str | None = None,
        max_new_tokens: int = DEFAULTS.max_new_tokens,
        temperature: float = DEFAULTS.temperature,
        top_k: int = DEFAULTS.top_k,
        top_p: float = DEFAULTS.top_p,
        repetition_penalty: float = DEFAULTS.repetition_penalty,
        seed: int | None = None,
    ) -> None:
        if generator.tokenizer is None:
            raise VnminiError("this model has no tokenizer (and so no chat template); "
                              "chat needs a model saved with one.")
        # Validate the options once, here, rather than at the first message.
        SamplingOptions(max_new_tokens, temperature, top_k, top_p, repetition_penalty, [], seed).validate()
        if max_new_tokens < 1:
            raise VnminiError(f"--max-new-tokens {max_new_tokens}: a chat answer needs at least 1.")
        self.generator = generator
        self.system_prompt = system_prompt or None
        self.max_new_tokens = max_new_tokens
        self.sampling: dict[str, Any] = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                             repetition_penalty=repetition_penalty, seed=seed)
        self.turns: list[tuple[str, str]] = []  # (user, assistant) pairs, oldest first
        self.dropped_turns = 0  # how many old pairs the last send() dropped
        self.last_interrupted = False
        self.last_stats: dict[str, Any] = {}
        self._turn_index = 0  # varies the seed per answer so a fixed seed doesn't repeat itself

    # ----------------------------------------------------------------- state
    @property
    def context_length(self) -> int:
        return self.generator.context_length

    def messages(self, user_text: str | None = None) -> list[dict[str, str]]:
        """The conversation as chat-template messages (plus ``user_text`` as the next user turn)."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for u, a in self.turns:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        if user_text is not None:
            msgs.append({"role": "user", "content": user_text})
        return msgs

    def reset(self) -> None:
        """Forget every turn (the system prompt stays)."""
        self.turns.clear()
        self.dropped_turns = 0
        self.last_interrupted = False

    def prompt_ids(self, user_text: str) -> list[int]:
        """Fit the conversation into the context (dropping oldest turns) and return the prompt ids."""
        tok = self.generator.tokenizer
        dropped = 0
        while True:
            ids = tok.encode_chat(self.messages(user_text), add_generation_prompt=True)
            if len(ids) + self.max_new_tokens <= self.context_length or not self.turns:
                break
            self.turns.pop(0)
            dropped += 1
        self.dropped_turns = dropped
        if len(ids) >= self.context_length:
            what = "the system prompt and your message are" if self.system_prompt else "your message is"
            raise VnminiError(
                f"{what} {len(ids)} tokens but the model's context is {self.context_length}; shorten it."
            )
        return ids

    # ------------------------------------------------------------------ chat
    def send(self, user_text: str) -> Iterator[TokenEvent]:
        """Prepare the prompt now (so ``dropped_turns`` is set) and return the streamed answer.

        The answer joins the history when the iterator finishes or is closed early.
        """
        if not user_text or not user_text.strip():
            raise VnminiError("the message is empty; type something.")
        ids = self.prompt_ids(user_text)
        self.last_interrupted = False
        kw = dict(self.sampling)
        if kw["seed"] is not None:
            kw["seed"] = kw["seed"] + self._turn_index
        self._turn_index += 1
        stop = list(self.generator.tokenizer.specials.eot)  # end-of-turn strings, in case they decode as text
        events = self.generator.generate(ids, max_new_tokens=self.max_new_tokens, stop=stop, **kw)
        return self._stream(user_text, events)

    def _stream(self, user_text: str, events: Iterator[TokenEvent]) -> Iterator[TokenEvent]:
        parts: list[str] = []
        finished = False
        try:
            for ev in events:
                parts.append(ev.text)
                yield ev
            finished = True
        finally:
            # Runs on normal end, on close() (GeneratorExit) and on KeyboardInterrupt alike.
            self.last_interrupted = not finished
            if not finished:
                events.close()  # type: ignore[attr-defined]
            self.last_stats = dict(self.generator.last_stats) if finished else {"finish_reason": "interrupted"}
            self.turns.append((user_text, "".join(parts).strip()))

    def ask(self, user_text: str) -> str:
        """Send a message and return the whole answer (non-streaming)."""
        return "".join(ev.text for ev in self.send(user_text))

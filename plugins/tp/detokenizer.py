"""Streaming text out of a stream of token ids, and cutting it at stop strings.

Decoding one token at a time is wrong twice over: a character can span several byte-level
tokens (each alone decodes to U+FFFD), and SentencePiece decoders drop the leading space
of whatever they decode first. ``IncrementalDetokenizer`` decodes a short window of
recent ids and subtracts the window's prefix text (the prefix/read-offset technique), and
holds text back while it ends in U+FFFD or in a byte-fallback token, so a delta never
holds a replacement character that a later token resolves, and the deltas add up to
exactly what decoding all ids at once gives.

``StopChecker`` finds stop strings in the growing text and holds back the tail that could
still become one, so the streamed text always equals the text a non-streaming request
returns.

    >>> detok = IncrementalDetokenizer(tok, prompt_ids)       # doctest: +SKIP
    >>> stop = StopChecker(("\\n\\n",))
    >>> for token_id in generated:
    ...     send(stop.add(detok.add(token_id)))
    ...     if stop.stopped:
    ...         break
    >>> send(stop.add(detok.finish()) + stop.finish())
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT = "\ufffd"
# How many prompt ids the first window reaches back: enough for any decoder's context.
_PROMPT_CONTEXT = 5


class Decoder(Protocol):
    byte_fallback_ids: frozenset[int]
    special_token_ids: frozenset[int]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Text deltas for a sequence that grows one token at a time after ``prompt_ids``."""

    def __init__(
        self,
        tokenizer: Decoder,
        prompt_ids: list[int] | tuple[int, ...] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids)
        # ids[prefix:read] decode to text already accounted for; ids[read:] are not yet emitted.
        self._prefix = max(len(self._ids) - _PROMPT_CONTEXT, 0)
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._prefix, self._read)
        self._parts: list[str] = []
        self._in_byte_run = False

    @property
    def text(self) -> str:
        """Everything emitted so far (generated text only, never the prompt)."""
        return "".join(self._parts)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes ('' while a character is unfinished)."""
        self._ids.append(token_id)
        if token_id in self._tokenizer.byte_fallback_ids:
            self._in_byte_run = True  # its bytes decode as a group with the byte tokens that follow
            return ""
        if self._in_byte_run and self._skip and token_id in self._tokenizer.special_token_ids:
            return ""  # skipped specials do not end a run of byte tokens
        self._in_byte_run = False
        window = self._decode(self._prefix, len(self._ids))
        if window.endswith(REPLACEMENT) or len(window) <= len(self._prefix_text):
            return ""
        return self._emit(window)

    def finish(self) -> str:
        """The text still held back (bytes that never formed a character) at the end."""
        window = self._decode(self._prefix, len(self._ids))
        if len(window) <= len(self._prefix_text) or self._read == len(self._ids):
            return ""
        return self._emit(window)

    def _emit(self, window: str) -> str:
        delta = window[len(self._prefix_text) :]
        # The new window starts where this one's unread part did: a clean character boundary.
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._prefix, self._read)
        self._parts.append(delta)
        return delta

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip)


# While every stop string is at most this long, the text held back is exactly what may
# begin one; with a longer one, as many characters as it has, less one (as vLLM always
# holds back).
EXACT_HOLD_BACK_CHARS = 128


class StopChecker:
    """Cuts the generated text before the first stop string; streams only what is safe.

    ``add(delta)`` returns the text that may be sent now. Once a stop string matches,
    ``stopped`` is true, ``text`` ends right before it and nothing more is returned.
    ``finish()`` returns the tail held back because it might have begun a stop string.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self.stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.stopped = False
        self.matched: str | None = None
        self._sent = 0  # chars of text already returned

    def add(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        old = len(self.text)
        self.text += delta
        if not self.stop:
            return self._release(len(self.text))
        # A new match must end inside delta, so it starts at most longest-1 chars before it.
        search_from = max(old - self._longest + 1, 0)
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            self.text = self.text[:cut]
            self.stopped = True
            return self._release(cut)
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> str:
        """Release the held-back tail: the sequence ended without completing a stop string."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of text that is a proper prefix of some stop string
        (with a stop string longer than :data:`EXACT_HOLD_BACK_CHARS`, of the text's last
        ``longest - 1`` characters)."""
        most = min(self._longest - 1, len(self.text))
        if self._longest > EXACT_HOLD_BACK_CHARS:
            # The exact search compares every tail up to the longest stop string at every
            # token: a 100k-character stop string took 7.5 ms a token of the engine's
            # thread (every request's decoding waits on it), growing with the output.
            # Holding back more text than needed is still correct: it is released once
            # it is too far back to begin a stop string, or when the sequence ends.
            return most
        for k in range(most, 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0

    def _release(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        out = self.text[self._sent : upto]
        self._sent = upto
        return out

"""Texts as attacks see them: whitespace words (the units RanMASK masks and counts in its radius), each with an
attackable core (the word without leading / trailing punctuation). A swap replaces one core and keeps the
punctuation around it, so the number of whitespace words never changes and "words changed" is the d of the
certificate."""

from __future__ import annotations

import dataclasses

from ranmask_jax.masking import split_core, split_words


@dataclasses.dataclass(frozen=True)
class AttackText:
    words: tuple[str, ...]  # whitespace-separated words, punctuation included
    modified: frozenset[int] = frozenset()  # indices of the words changed so far

    @classmethod
    def from_string(cls, text: str) -> AttackText:
        words = split_words(text)
        if not words:
            raise ValueError("an empty text cannot be attacked")
        return cls(words)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def split(self, i: int) -> tuple[str, str, str]:
        """(leading punctuation, core, trailing punctuation) of word i."""
        return split_core(self.words[i])

    def core(self, i: int) -> str:
        return self.split(i)[1]

    def attackable(self) -> list[int]:
        """Indices of words with a non-empty core."""
        return [i for i in range(len(self.words)) if self.core(i)]

    def replace(self, i: int, new_core: str) -> AttackText:
        """Word i with its core replaced (punctuation kept); word i counts as modified."""
        if not new_core or any(c.isspace() for c in new_core):
            raise ValueError(f"a replacement must be one non-empty word, got {new_core!r}")
        pre, _, post = self.split(i)
        words = self.words[:i] + (pre + new_core + post,) + self.words[i + 1:]
        return AttackText(words, self.modified | {i})

    def with_word(self, i: int, word: str) -> str:
        """The text with word i replaced whole (for importance scores: the unknown token); not an attack step."""
        return " ".join(self.words[:i] + (word,) + self.words[i + 1:])

    def without_word(self, i: int) -> str:
        """The text with word i deleted (TextFooler's importance scores); not an attack step."""
        return " ".join(self.words[:i] + self.words[i + 1:])

    def window(self, i: int, size: int) -> str:
        """``size`` words around word i (TextFooler's sentence-similarity window), clipped to the text."""
        half = size // 2
        lo = max(0, min(i - half, len(self.words) - size))
        return " ".join(self.words[lo:lo + size])

    def words_changed(self, original: AttackText) -> int:
        return sum(a != b for a, b in zip(self.words, original.words, strict=True))

"""Constraints for decoding code tuples with beam search: a prefix trie, and the seed's successor table.

Both are built from the items' code tuples as tokenizer ids (item ``i`` ↔ tuple ``i``) and are
used the same way: ``allowed(prefix)`` lists the token ids that may follow ``prefix`` (the code
tokens decoded so far, after the decoder's start token), and calling the object as
``fn(batch_id, input_ids)`` makes it a HuggingFace ``generate(prefix_allowed_tokens_fn=fn)``.
EOS is allowed only after a full tuple, so with ``max_new_tokens = levels + 1`` every beam ends
with EOS at the same step. ``item_of`` maps a decoded tuple back to its item, and
``count_invalid`` counts the decoded tuples that are no item. ``transitions()`` gives either as
an automaton (allowed tokens and next state per state), which
:func:`models.rqvae_t5.seq2seq.beam_search` follows for all beams at once.

* ``CodeTrie`` — a true prefix trie: every beam it allows spells an existing item. Each prefix's
  list is precomputed, so ``allowed`` is one dict lookup (beam search calls it
  beams × batch × steps times).
* ``SuccessorTable`` — the seed's ``allowed_tokens[last_token]`` (MQL4GRec ``data.py``,
  ``get_prefix_allowed_tokens_fn_new``; MQL4GRec's own ``test.py`` decodes with a prefix trie,
  ``generation_trie.py``): the first-level tokens at the start, then every token
  that follows the last one in some item's tuple. It only looks one token back, so it admits
  tuples that belong to no item (items ``(a1, b1, c1)`` and ``(a2, b1, c2)`` let it decode
  ``(a1, b1, c2)``); kept to measure that. Unlike the seed's table, which after a last-level
  token starts the next item's first level, it allows EOS there, like the trie.

A prefix neither allows (a beam already past EOS, or one that left the constraint) gets
``[eos]``: HuggingFace rejects an empty list, and such beams carry a score of -inf. Neither
class imports transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["CodeTrie", "SuccessorTable"]


def _as_list(token_ids) -> list[int]:
    return token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)


class _CodeConstraint:
    """What the trie and the table share: the items' tuples, the HuggingFace hook, decoding back."""

    def __init__(self, code_ids: Sequence[Sequence[int]], eos_token_id: int):
        tuples = [tuple(int(t) for t in _as_list(ids)) for ids in code_ids]
        if not tuples or not tuples[0]:
            raise ValueError("code_ids must hold at least one non-empty tuple of token ids.")
        self.num_levels = len(tuples[0])
        self.eos_token_id = int(eos_token_id)
        self._item_of: dict[tuple[int, ...], int] = {}
        for item, ids in enumerate(tuples):
            if len(ids) != self.num_levels:
                raise ValueError(f"code_ids[{item}] has {len(ids)} tokens, expected {self.num_levels} like item 0.")
            if self.eos_token_id in ids:
                raise ValueError(f"code_ids[{item}] contains the EOS id {self.eos_token_id}.")
            other = self._item_of.setdefault(ids, item)
            if other != item:
                raise ValueError(f"code_ids[{other}] and code_ids[{item}] are the same tuple {ids}.")
        self._eos_only = [self.eos_token_id]

    @classmethod
    def from_tokens(cls, item_tokens: Sequence[Sequence[str]], vocab: Mapping[str, int], eos_token_id: int):
        """Build from code tokens (``code_tokens(codes, letters)``) and a token → id map.

        ``vocab`` is e.g. ``tokenizer.get_vocab()`` after ``tokenizer.add_tokens(all_code_tokens(...))``.
        """
        missing = next((t for tokens in item_tokens for t in tokens if t not in vocab), None)
        if missing is not None:
            raise ValueError(f"Token {missing!r} is not in the vocabulary; add every code token to the tokenizer.")
        return cls([[vocab[t] for t in tokens] for tokens in item_tokens], eos_token_id)

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Token ids that may follow ``prefix`` (decoded code tokens, start token excluded); do not modify."""
        raise NotImplementedError

    def __call__(self, batch_id: int, input_ids) -> list[int]:
        """``prefix_allowed_tokens_fn``: ``input_ids`` begins with the decoder start token, dropped here."""
        return self.allowed(_as_list(input_ids)[1:])

    def item_of(self, token_ids) -> int | None:
        """The item whose tuple is the first ``num_levels`` of ``token_ids``, or None.

        ``token_ids`` are generated ids with the decoder start token removed
        (``output_ids[row, 1:]``); what follows the tuple (EOS, padding) is ignored.
        """
        return self._item_of.get(tuple(_as_list(token_ids)[: self.num_levels]))

    def count_invalid(self, sequences: Iterable) -> int:
        """How many of ``sequences`` (each as for ``item_of``) decode to no item."""
        return sum(self.item_of(ids) is None for ids in sequences)


class CodeTrie(_CodeConstraint):
    """Prefix trie over the items' code tuples: beam search constrained by it only yields items.

    Args:
        code_ids: one tuple of token ids per item, all of the same length, no two equal.
        eos_token_id: allowed after a full tuple, and only there.
    """

    def __init__(self, code_ids: Sequence[Sequence[int]], eos_token_id: int):
        super().__init__(code_ids, eos_token_id)
        children: dict[tuple[int, ...], set[int]] = {}
        for ids in self._item_of:
            for depth in range(self.num_levels):
                children.setdefault(ids[:depth], set()).add(ids[depth])
        self._allowed = {prefix: sorted(tokens) for prefix, tokens in children.items()}

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        return self._allowed.get(tuple(prefix), self._eos_only)

    def transitions(self) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """The trie as an automaton for batched beam search: state 0 is the empty prefix, every other
        state one prefix; ``tokens[s]`` may follow state ``s`` and lead to ``next_states[s]``;
        ``items[s]`` is the item a full tuple's state spells (-1 for shorter prefixes)."""
        index = {(): 0}
        tokens: list[list[int]] = [[]]
        next_states: list[list[int]] = [[]]
        items = [-1]
        for prefix in sorted(self._allowed, key=len):  # parents before children
            for token in self._allowed[prefix]:
                child = prefix + (token,)
                index[child] = len(tokens)
                tokens.append([])
                next_states.append([])
                items.append(self._item_of.get(child, -1))
                tokens[index[prefix]].append(token)
                next_states[index[prefix]].append(index[child])
        return tokens, next_states, items


class SuccessorTable(_CodeConstraint):
    """The seed's allowed-next-token table: looks at the last token only, so it admits non-items.

    Args:
        code_ids: one tuple of token ids per item, all of the same length, no two equal.
        eos_token_id: allowed after any token that ends some item's tuple.
    """

    def __init__(self, code_ids: Sequence[Sequence[int]], eos_token_id: int):
        super().__init__(code_ids, eos_token_id)
        successors: dict[int, set[int]] = {}
        for ids in self._item_of:
            for token, following in zip(ids, ids[1:] + (self.eos_token_id,)):
                successors.setdefault(token, set()).add(following)
        self._first = sorted({ids[0] for ids in self._item_of})
        self._next = {token: sorted(following) for token, following in successors.items()}

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        if not prefix:
            return self._first
        return self._next.get(prefix[-1], self._eos_only)

    def transitions(self) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """The table as an automaton (see :meth:`CodeTrie.transitions`): state 0 is the start, state
        ``1 + j`` "the last token was the j-th code token"; EOS is left out (it ends a tuple). A
        state knows no item (``items`` all -1): the table does not remember the tuple."""
        codes = sorted({t for ids in self._item_of for t in ids})
        state = {token: 1 + j for j, token in enumerate(codes)}
        tokens = [list(self._first)] + [[t for t in self._next[c] if t != self.eos_token_id] for c in codes]
        return tokens, [[state[t] for t in row] for row in tokens], [-1] * len(tokens)

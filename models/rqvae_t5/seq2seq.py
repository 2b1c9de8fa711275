"""The T5 half of ``rqvae_t5``: a code vocabulary, the seed's tasks as token sequences, constrained beam search.

* **Vocabulary** (:func:`build_tokenizer`): ``<pad>``, ``</s>``, ``<unk>``, one prompt token per
  task and the code tokens of every modality (``<a_0>`` … ``<d_255>`` for text codes, ``<A_0>`` …
  for image codes) as a HuggingFace word-level tokenizer, so it is built offline, saved with
  ``save_pretrained`` and read back like any other. With a pretrained T5 (``t5_pretrained``: a
  local directory), its own tokenizer is loaded and the code and prompt tokens are added to it.
* **Tasks** (:data:`TASKS`, the seed's list; ``L`` code tokens per item, one modality's codes):

  ==============  =====================================================  =======================
  task            input                                                  output
  ==============  =====================================================  =======================
  seqrec          ``<seqrec>`` + the history's text codes                the next item's text codes
  seqimage        ``<seqimage>`` + the history's image codes             the next item's image codes
  fusionseqrec    ``<fusionseqrec>`` + each history item's text then     the next item's text codes
                  image codes
  item2image      ``<item2image>`` + an item's text codes                its image codes
  image2item      ``<image2item>`` + an item's image codes               its text codes
  ==============  =====================================================  =======================

  Inputs end with ``</s>``, outputs are the ``L`` codes and ``</s>``; histories keep their last
  ``max_his_len`` items. Sequence tasks see only what :func:`~harness.tasks.recommendation.training_sequences`
  allows; the translation tasks see the catalogue only.
* **Decoding** (:func:`beam_search`): ``num_beams`` beams of ``L`` code tokens and ``</s>``, every
  beam returned with its summed log-probability, under a constraint given as an automaton
  (:class:`Automaton`: the trie's prefixes, the seed's successor table, or nothing). Every step
  is a few tensor operations over all beams of a batch; it returns the beams and scores of
  ``generate(prefix_allowed_tokens_fn=trie)`` at about its speed (``bench/bench_generative_rec.py``)
  and can keep a user's history items out of the beams, which a trie shared by all users cannot.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError

__all__ = ["TASKS", "SPECIAL_TOKENS", "CodeVocabulary", "build_tokenizer", "build_t5", "Seq2SeqSamples",
           "TaskBatches", "T5Recommender", "Automaton", "beam_search"]  # fmt: skip

TASKS = ("seqrec", "seqimage", "fusionseqrec", "item2image", "image2item")
TASK_MODALITIES = {"seqrec": ("text",), "seqimage": ("image",), "fusionseqrec": ("text", "image"),
                   "item2image": ("text", "image"), "image2item": ("text", "image")}  # fmt: skip
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
PAD, EOS = 0, 1  # ids of <pad> (also the decoder start) and </s> in the built vocabulary


def build_tokenizer(code_tokens: Sequence[str], pretrained: str | None = None):
    """A tokenizer holding the prompt and code tokens: word-level from scratch, or a pretrained one extended."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    prompts = [f"<{task}>" for task in TASKS]
    if pretrained:
        tokenizer = _from_pretrained(AutoTokenizer, pretrained, "a tokenizer")
        tokenizer.add_tokens([*prompts, *code_tokens])
        return tokenizer
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *prompts, *code_tokens])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^<>]*>"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _from_pretrained(cls, path: str, what: str):
    try:
        return cls.from_pretrained(path)
    except Exception as exc:
        raise HarnessError(f"model.t5_pretrained: could not load {what} from {path!r} "
                           f"({' '.join(str(exc).split())[:160]}).") from exc  # fmt: skip


def build_t5(tokenizer, *, d_model: int, d_ff: int, num_layers: int, num_heads: int, dropout: float,
             scale_decoder_output: bool = False, pretrained: str | None = None, seed: int = 0) -> nn.Module:  # fmt: skip
    """``T5ForConditionalGeneration`` from a config (seeded init), or from a pretrained directory, sized to the vocabulary.

    ``scale_decoder_output`` multiplies the decoder's last state by ``d_model ** -0.5`` before the
    output layer, which shares its weights with the code embeddings (the original T5). With the
    scale, on the embedded MovieLens data, the model stays below a count model of its own codes;
    without it, it reaches it (README). It is passed as ``tie_word_embeddings``, which transformers
    5 reads as this scale alone (the weights stay shared); transformers 4 also unties the weights.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    if pretrained:
        model = _from_pretrained(T5ForConditionalGeneration, pretrained, "T5")
        model.resize_token_embeddings(len(tokenizer))
        return model
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
                      num_layers=num_layers, num_decoder_layers=num_layers, num_heads=num_heads,
                      dropout_rate=dropout, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=scale_decoder_output)  # fmt: skip
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)


@dataclass(frozen=True)
class CodeVocabulary:
    """Token ids of the items' codes per modality (``[n_items, L]``, row 0 the padding item) and of the prompts."""

    codes: dict[str, np.ndarray]
    prompts: dict[str, int]
    eos: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer, item_tokens: dict[str, list[list[str]]]) -> "CodeVocabulary":
        """``item_tokens[modality][i]``: item id ``i + 1``'s code tokens."""
        vocab = tokenizer.get_vocab()
        codes = {}
        for modality, tokens in item_tokens.items():
            ids = np.array([[vocab[t] for t in row] for row in tokens], dtype=np.int64)
            codes[modality] = np.concatenate([np.full((1, ids.shape[1]), tokenizer.pad_token_id), ids])
        prompts = {task: vocab[f"<{task}>"] for task in TASKS}
        return cls(codes, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def history_input(self, task: str, history: np.ndarray, max_his_len: int) -> list[int]:
        """``<task>`` + the codes of the last ``max_his_len`` items (both modalities for fusion) + ``</s>``."""
        items = np.asarray(history, np.int64)[-max_his_len:]
        modalities = TASK_MODALITIES[task]
        per_item = np.concatenate([self.codes[m][items] for m in modalities], axis=1) if len(items) else []
        return [self.prompts[task], *np.ravel(per_item).tolist(), self.eos]

    def target(self, modality: str, item: int) -> list[int]:
        return [*self.codes[modality][item].tolist(), self.eos]


class Seq2SeqSamples(torch.utils.data.Dataset):
    """The seed's training pairs, built when read: row ``i`` of :attr:`rows` is ``(task, source, position)``,
    a training sequence and the position of its target for a sequence task, a catalogue item (and
    -1) for a translation task. :meth:`batches` picks which of them an epoch trains on."""

    def __init__(self, vocabulary: CodeVocabulary, tasks: Sequence[str], sequences: Sequence[np.ndarray],
                 items: np.ndarray, max_his_len: int):  # fmt: skip
        self.vocabulary, self.max_his_len, self.pad = vocabulary, max_his_len, vocabulary.pad
        self.task_names = tuple(tasks)
        self.sequences = [np.asarray(s, np.int64) for s in sequences]
        items, blocks = np.asarray(items, np.int64), []
        for t, task in enumerate(self.task_names):
            if task in ("item2image", "image2item"):
                blocks.append(np.stack([np.full(len(items), t), items, np.full(len(items), -1)], 1))
                continue
            for s, sequence in enumerate(self.sequences):
                positions = np.arange(1, len(sequence))
                blocks.append(np.stack([np.full(len(positions), t), np.full(len(positions), s), positions], 1))
        self.rows = np.concatenate(blocks).astype(np.int64) if blocks else np.zeros((0, 3), np.int64)
        self.tasks = [self.task_names[t] for t in self.rows[:, 0]]

    def batches(self, batch_size: int, positions_per_sequence: int, recent: bool, seed: int) -> "TaskBatches":
        """Batches of one task each; every epoch trains each sequence task on ``positions_per_sequence``
        positions of every sequence, its most recent (``recent``) or drawn anew each epoch."""
        owners = np.where(self.rows[:, 2] >= 0, self.rows[:, 1], -1)
        return TaskBatches(self.tasks, batch_size, seed, owners=owners, per_owner=positions_per_sequence,
                           priority=self.rows[:, 2] if recent else None)  # fmt: skip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        t, source, position = self.rows[index].tolist()
        task, vocabulary = self.task_names[t], self.vocabulary
        if position < 0:
            origin, target = ("text", "image") if task == "item2image" else ("image", "text")
            return [vocabulary.prompts[task], *vocabulary.codes[origin][source].tolist(), vocabulary.eos], \
                vocabulary.target(target, source)  # fmt: skip
        sequence = self.sequences[source]
        output = "image" if task == "seqimage" else "text"
        return vocabulary.history_input(task, sequence[:position], self.max_his_len), \
            vocabulary.target(output, int(sequence[position]))  # fmt: skip

    def collate(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, labels = zip(*rows)
        return (*_pad_right(inputs, self.pad), _pad_right(labels, -100)[0])


class TaskBatches(torch.utils.data.Sampler):
    """Shuffled batches of one task each: a translation pair (a few tokens) never waits padded to a
    history (up to ``1 + max_his_len x L`` tokens), and a fusion history never pads a plain one.

    With ``owners`` (row ``i``'s sequence, -1 for a row always trained on), every epoch keeps
    ``per_owner`` rows of each owner and task: those of highest ``priority``, or a fresh random draw
    without one. Every epoch shuffles each task's kept rows, cuts them into batches and shuffles
    the batches of all tasks together, from a seeded generator: the same seed gives the same batches.
    """

    def __init__(self, tasks: Sequence[str], batch_size: int, seed: int, owners: np.ndarray | None = None,
                 per_owner: int = 0, priority: np.ndarray | None = None):  # fmt: skip
        tasks = np.asarray(tasks)
        self.groups = [np.flatnonzero(tasks == task) for task in dict.fromkeys(tasks.tolist())]
        self.owners = np.full(len(tasks), -1) if owners is None else np.asarray(owners)
        self.per_owner, self.priority = per_owner, priority
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        # an epoch keeps as many rows of each group whatever its keys: count them once
        self._sizes = [len(self._keep(group, np.zeros(len(group)))) for group in self.groups]

    def _keep(self, group: np.ndarray, key: np.ndarray) -> np.ndarray:
        """``group``'s rows an epoch trains on: every row without an owner, and each owner's
        ``per_owner`` rows of highest ``key``."""
        owners = self.owners[group]
        if not self.per_owner or (owners < 0).all():
            return group
        order = np.lexsort((-key, owners))  # by owner, then highest key first
        sorted_owners = owners[order]
        first = np.r_[0, np.flatnonzero(np.diff(sorted_owners)) + 1]
        rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
        return np.sort(group[order[(rank < self.per_owner) | (sorted_owners < 0)]])

    def _epoch_rows(self, group: np.ndarray) -> np.ndarray:
        key = self.priority[group] if self.priority is not None else self.rng.random(len(group))
        return self._keep(group, key)

    @property
    def rows_per_epoch(self) -> int:
        return int(sum(self._sizes))

    def __len__(self) -> int:
        return sum(-(-size // self.batch_size) for size in self._sizes)

    def __iter__(self):
        batches = [order[i : i + self.batch_size].tolist() for group in self.groups
                   for order in [self.rng.permutation(self._epoch_rows(group))]
                   for i in range(0, len(order), self.batch_size)]  # fmt: skip
        for index in self.rng.permutation(len(batches)):
            yield batches[index]


def _pad_right(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, max_len]`` ids padded on the right with ``value``, and the attention mask."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    mask = torch.zeros(out.shape, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return out, mask


class T5Recommender(nn.Module):
    """The T5 model in the training loop's interface: ``training_step((input_ids, attention_mask, labels))``."""

    def __init__(self, t5: nn.Module):
        super().__init__()
        self.t5 = t5
        self._loss_sum, self._rows = 0.0, 0

    def training_step(self, batch) -> torch.Tensor:
        input_ids, attention_mask, labels = batch
        loss = self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        self._loss_sum += float(loss.detach()) * len(labels)
        self._rows += len(labels)
        return loss

    def epoch_logs(self) -> dict[str, float]:
        logs = {"loss/t5": self._loss_sum / max(1, self._rows)}
        self._loss_sum, self._rows = 0.0, 0
        return logs


@dataclass(frozen=True)
class Automaton:
    """A decoding constraint as tensors: per state, the allowed tokens (``[S, C]``, padded), the state
    each leads to, which entries are real, and the item a state spells (``[S]``, -1 for none).
    Beam search follows it for every beam at once."""

    tokens: torch.Tensor
    next_states: torch.Tensor
    valid: torch.Tensor
    items: torch.Tensor
    below: torch.Tensor  # [S] items reachable from each state (a tree's subtree sizes; 0 where unknown)
    paths: torch.Tensor  # [items, depth] the states on each item's path below the start (empty if unknown)

    @classmethod
    def from_transitions(cls, tokens: list[list[int]], next_states: list[list[int]], items: list[int]) -> "Automaton":
        """From ``constraint.transitions()`` (:class:`~models.rqvae_t5.trie.CodeTrie`, ``SuccessorTable``)."""
        width = max(1, max(len(row) for row in tokens))
        out = [torch.zeros((len(tokens), width), dtype=torch.long) for _ in range(2)]
        valid = torch.zeros((len(tokens), width), dtype=torch.bool)
        for state, (row, targets) in enumerate(zip(tokens, next_states)):
            out[0][state, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            out[1][state, : len(row)] = torch.as_tensor(targets, dtype=torch.long)
            valid[state, : len(row)] = True
        parent = {child: state for state, targets in enumerate(next_states) for child in targets}
        below, paths = [0] * len(tokens), [[] for _ in range(max(items) + 1)]
        if len(parent) == len(tokens) - 1:  # a tree (the trie): every state but the start has one parent
            for leaf, item in enumerate(items):
                state = leaf
                while item >= 0 and state != 0:
                    below[state] += 1
                    paths[item].insert(0, state)
                    state = parent[state]
        return cls(out[0], out[1], valid, torch.as_tensor(items, dtype=torch.long), torch.as_tensor(below),
                   torch.as_tensor(paths if all(paths) else [], dtype=torch.long))  # fmt: skip

    @classmethod
    def unconstrained(cls, vocab_size: int, pad: int) -> "Automaton":
        """Every token but padding at every step: free generation."""
        tokens = torch.tensor([[t for t in range(vocab_size) if t != pad]])
        return cls(tokens, torch.zeros_like(tokens), torch.ones_like(tokens, dtype=torch.bool), torch.tensor([-1]),
                   torch.zeros(1, dtype=torch.long), torch.zeros((0, 0), dtype=torch.long))  # fmt: skip

    def to(self, device: torch.device) -> "Automaton":
        return Automaton(*(t.to(device) for t in (self.tokens, self.next_states, self.valid, self.items, self.below,
                                                   self.paths)))  # fmt: skip


@torch.no_grad()
def beam_search(t5: nn.Module, inputs: Sequence[list[int]], num_levels: int, num_beams: int, automaton: Automaton, *,
                eos: int, pad: int, device: torch.device, batch_size: int = 64,
                exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Beam search of ``num_levels`` code tokens then EOS, every beam kept: codes ``[N, num_beams, num_levels]``
    and summed log-probabilities ``[N, num_beams]`` (EOS included; best first; ``-inf`` where fewer
    paths exist than beams).

    Each step scores only the tokens ``automaton`` allows after each beam's state and keeps the
    ``num_beams`` best (beam, token) pairs of every input, as tensors over all beams at once; the
    decoder's key/value cache is reordered with the surviving beams. The encoder runs once per input.
    ``exclude[i]`` (item indices of the automaton's ``items``) are never decoded for input ``i``:
    with a trie, a prefix whose every item is excluded is never entered, so a user's history
    spends no beam.
    """
    from transformers.modeling_outputs import BaseModelOutput

    t5.eval()
    # transformers 5 calls the decoder's key/value cache ``cache`` (in and out), 4.x ``past_key_values``
    cache_arg = "cache" if "cache" in inspect.signature(t5.forward).parameters else "past_key_values"
    automaton = automaton.to(device)
    width, k = automaton.tokens.shape[1], num_beams
    codes = np.zeros((len(inputs), k, num_levels), np.int64)
    scores = np.full((len(inputs), k), -np.inf, np.float32)
    for start in range(0, len(inputs), batch_size):
        ids, mask = (t.to(device) for t in _pad_right(inputs[start : start + batch_size], pad))
        b = len(ids)
        hidden = t5.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state.repeat_interleave(k, 0)
        encoded, mask = BaseModelOutput(last_hidden_state=hidden), mask.repeat_interleave(k, 0)
        beam_scores = torch.full((b, k), -torch.inf, device=device)
        beam_scores[:, 0] = 0.0  # one live beam per input at the start
        last = torch.full((b * k, 1), t5.config.decoder_start_token_id, dtype=torch.long, device=device)
        past, history = None, []
        offsets = (torch.arange(b, device=device) * k)[:, None]
        remaining = None  # [b·k, S]: items still reachable from each state for the beam's input
        if exclude is not None and automaton.paths.numel():
            removed = torch.zeros((b, len(automaton.below)), dtype=torch.long, device=device)
            for row, items in enumerate(exclude[start : start + b]):
                items = np.asarray(items, np.int64)
                items = torch.as_tensor(items[(items >= 0) & (items < len(automaton.paths))], device=device)
                on_paths = automaton.paths[items].flatten()
                removed[row].index_add_(0, on_paths, torch.ones_like(on_paths))
            remaining = (automaton.below - removed).repeat_interleave(k, 0)
        states = torch.zeros(b * k, dtype=torch.long, device=device)
        for step in range(num_levels + 1):
            out = t5(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=last, use_cache=True,
                     **{cache_arg: past})  # fmt: skip
            past, log_probs = getattr(out, cache_arg), out.logits[:, -1].float().log_softmax(-1)
            if step == num_levels:  # the tuple is complete: it ends with EOS
                beam_scores = beam_scores + log_probs[:, eos].view(b, k)
                break
            candidates = automaton.tokens[states]  # [b·k, width]
            blocked = ~automaton.valid[states]
            if remaining is not None:  # no step into a subtree whose items are all excluded
                blocked |= remaining.gather(1, automaton.next_states[states]) == 0
            step_scores = log_probs.gather(1, candidates).masked_fill(blocked, -torch.inf)
            best, index = (beam_scores.view(-1, 1) + step_scores).view(b, k * width).topk(k, dim=1)
            source = (index // width + offsets).view(-1)
            choice = (index % width).view(-1)
            token = candidates[source, choice]
            states, beam_scores = automaton.next_states[states[source], choice], best
            history = [h[source] for h in history] + [token]
            past.reorder_cache(source)
            last = token[:, None]
        order = beam_scores.argsort(dim=1, descending=True, stable=True)
        tuples = torch.stack(history, 1).view(b, k, num_levels)
        codes[start : start + b] = tuples.gather(1, order[..., None].expand(-1, -1, num_levels)).cpu().numpy()
        scores[start : start + b] = beam_scores.gather(1, order).cpu().numpy()
    return codes, scores

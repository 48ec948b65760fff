"""Render examples with the tokenizer's own chat template and mark which tokens are trained.

Labels are set only on assistant tokens, and each assistant turn's labels end with the end-of-turn token (the
tokenizer's eos once data/chat_format.py has applied the recipe's format; `<|im_end|>` for ChatML). That is what
teaches the model to stop. The seeds' recipe
(`pad_token = eos_token` + `DataCollatorForLanguageModeling`) masks every pad id, so the EOS too, and the
model never learns to stop; here labels come from character spans, never from token ids.
"""
from __future__ import annotations

from dataclasses import dataclass

from afinar.data.formats import Example, Problem
from afinar.errors import AfinarError

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    where: str
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def end_of_turn(tokenizer) -> str:
    """The token that closes an assistant turn: the tokenizer's eos, once the recipe's chat format is applied
    (data/chat_format.apply makes them one)."""
    return tokenizer.eos_token


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character span of each assistant turn, end-of-turn included."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    eot = end_of_turn(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        if not text.startswith(prefix):
            raise AfinarError(
                "T001",
                "la plantilla de chat del tokenizador no es incremental (el prefijo cambia al añadir turnos); "
                "no se pueden marcar solo los tokens del asistente.",
            )
        start = len(prefix)
        stop = text.find(eot, start)
        if stop < 0:
            raise AfinarError("T001", f"la plantilla no cierra la respuesta del asistente con el fin de turno ({eot}).")
        spans.append((start, stop + len(eot)))
    return text, spans


def encode(tokenizer, messages: list[dict], where: str = "") -> Encoded:
    """Token ids and labels of a conversation, tokenized in pieces cut where each answer starts and ends.

    Cut there so that the text before an answer is tokenized exactly as the generation prompt is at inference: a
    byte-level BPE may merge across the cut otherwise (with SmolLM2's vocabulary, Llama 3's prompt ends in "\n\n",
    one token at the end of a prompt but two before "Llama…": the model would learn to answer after a prompt it
    never sees)."""
    text, spans = assistant_spans(tokenizer, messages)
    ids: list[int] = []
    labels: list[int] = []
    done = 0
    for start, stop in [*spans, (len(text), len(text))]:
        for a, b, trained in ((done, start, False), (start, stop, True)):
            if b > a:
                piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
                ids += piece
                labels += piece if trained else [IGNORE] * len(piece)
        done = stop
    return Encoded(ids, labels, where)


def encode_examples(
    tokenizer, examples: list[Example], system_prompt: str | None, max_length: int, policy: str
) -> tuple[list[Encoded], list[Problem], dict]:
    """Encode all examples and apply the over-length policy: drop, truncate or error."""
    kept, problems = [], []
    stats = {"total": len(examples), "too_long": 0, "dropped": 0, "truncated": 0, "max_tokens": 0}
    for example in examples:
        enc = encode(tokenizer, with_system(example.messages, system_prompt), example.where)
        stats["max_tokens"] = max(stats["max_tokens"], len(enc.input_ids))
        if len(enc.input_ids) > max_length:
            stats["too_long"] += 1
            severity = "error" if policy == "error" else "warning"
            action = {"drop": "se descarta", "truncate": "se trunca (no aprenderá a terminar aquí)", "error": "sube max_length"}[policy]
            problems.append(
                Problem(example.source, example.line, "D010",
                        f"{len(enc.input_ids)} tokens > max_length {max_length}: {action}", severity)
            )
            if policy == "drop":
                stats["dropped"] += 1
                continue
            if policy == "truncate":
                stats["truncated"] += 1
                enc = Encoded(enc.input_ids[:max_length], enc.labels[:max_length], enc.where, truncated=True)
                if enc.n_trained == 0:
                    stats["dropped"] += 1
                    continue
        kept.append(enc)
    return kept, problems, stats


def trained_tokens(labels) -> int:
    """Tokens that carry loss: labels are shifted by one inside the model, so the first column never does."""
    return int((labels[:, 1:] != IGNORE).sum())


def ids_and_labels(row) -> tuple[list[int], list[int]]:
    """An `Encoded` or a row read from the tokenized Arrow dataset (a dict)."""
    if isinstance(row, dict):
        return row["input_ids"], row["labels"]
    return row.input_ids, row.labels


def shared_prefix_length(rows) -> int:
    """Tokens every row starts with whose hidden states predict no label: the system prompt and the chat
    template's opening, the same in every example of a recipe (61 of a nursing example's 269 on average). `rows`:
    `Encoded` or dict rows (an evaluation set); a tokenized dataset goes through `shared_prefix_of_batches`.

    Position t predicts token t+1, so the prefix stops before the position that predicts the first labelled token:
    no loss is read inside it, and the token right after it carries no label."""
    import numpy as np

    pairs = [ids_and_labels(row) for row in rows]
    if not pairs:
        return 0
    lengths = np.array([len(ids) for ids, _ in pairs])
    ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in pairs])
    labels = np.concatenate([np.asarray(labels, dtype=np.int64) for _, labels in pairs])
    return shared_prefix_of_batches([(ids, labels, lengths)])


def shared_prefix_of_batches(batches) -> int:
    """`shared_prefix_length` over batches of rows, each (ids, labels, lengths): the rows' tokens one after another
    (1-D arrays) and each row's length. Vectorized: 100 000 examples in 0.2 s."""
    import numpy as np

    reference, common, first_label = None, 0, None
    for ids, labels, lengths in batches:
        if not len(lengths):
            continue
        width = int(lengths.max())
        inside = np.arange(width) < lengths[:, None]  # (n, width)
        grid = np.full(inside.shape, -1, dtype=np.int64)  # no token id is -1: a row's end differs from any token
        grid[inside] = ids
        labelled = np.zeros(inside.shape, dtype=bool)
        labelled[inside] = labels != IGNORE
        if reference is None:
            reference, common = grid[0, : lengths[0]], int(lengths[0])
        span = min(common, width)
        differs = grid[:, :span] != reference[:span]  # (n, span)
        common = min(common, width, int(np.where(differs.any(1), differs.argmax(1), span).min()))
        first = int(np.where(labelled.any(1), labelled.argmax(1), lengths).min())
        first_label = first if first_label is None else min(first_label, first)
    return 0 if reference is None else max(0, min(common, first_label - 1))


def collate(batch: list, pad_id: int):
    """Right-pad to the longest row. Padding gets label -100 by position, so a pad id equal to eos hides nothing.

    The 2-D attention mask is always passed: with it transformers 4.57 keeps SDPA's causal fast path."""
    import torch

    pairs = [ids_and_labels(row) for row in batch]
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    for row, (ids, labs) in enumerate(pairs):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        labels[row, :n] = torch.tensor(labs)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def collate_packed(rows: list[list], pad_id: int, prefix: int = 0):
    """Each row: its examples concatenated, position_ids restarting at 0 for each; no attention mask.

    transformers ≥ 4.54 reads the restarts as sequence boundaries (row by row) and builds a block-diagonal causal
    mask, so no token attends to another example; it only does so when the call has no attention_mask and no KV
    cache (`use_cache=False`). Each example's first label is -100: the previous example's last token must not
    learn to predict it. Rows shorter than the widest end in padding that forms its own block (positions from 0,
    labels -100), which no real token can see.

    `prefix` > 0: the first `prefix` tokens of every example are the same and predict no label
    (`shared_prefix_length`): a row holds them once, then each example's rest with its positions going on from
    `prefix`. Only afinar's per-example attention reads such a row (afinar/attention.py: every example sees the
    row's prefix, then itself); transformers' own mask would let the examples see each other."""
    import torch

    def pieces(row):  # (ids, labels, first position) of each block of the row
        if not prefix:
            yield from ((*ids_and_labels(example), 0) for example in row)
            return
        yield ids_and_labels(row[0])[0][:prefix], [IGNORE] * prefix, 0
        yield from ((ids[prefix:], labs[prefix:], prefix) for ids, labs in map(ids_and_labels, row))

    width = max(sum(len(ids) for ids, _, _ in pieces(row)) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, W)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (B, W)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (B, W)
    for r, row in enumerate(rows):
        start = 0
        for ids, labs, first in pieces(row):
            n = len(ids)
            input_ids[r, start : start + n] = torch.tensor(ids)
            labels[r, start + 1 : start + n] = torch.tensor(labs[1:])
            positions[r, start : start + n] = torch.arange(first, first + n)
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}

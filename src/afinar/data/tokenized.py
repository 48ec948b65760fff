"""Tokenized training data on disk: 🤗 datasets (Arrow, memory-mapped), cached by content, recipe and tokenizer.

The first run of a recipe reads the JSONL files, checks them (`validate.gather`: every problem by file:line:code),
renders each example with the chat template (`templates.encode`, `datasets.map` with a progress bar, `num_proc` on
large corpora) and writes train/ and val/ Arrow folders plus `meta.json` (problems, counts, data fingerprint; never
row text) into one cache folder, renamed into place only when complete. A later run with the same files, the same
`data:` section and the same tokenizer opens those files memory-mapped and reads nothing else: memory stays flat
however large the corpus, and the time to the first step is the time to open the files.

Cache: `~/.cache/afinar/tokenized/<key>/` (`AFINAR_DATA_CACHE` moves it). Deleting it is always safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from afinar.atomic import atomic_dir
from afinar.config import DataSection
from afinar.data.formats import Problem
from afinar.data.templates import IGNORE, encode, with_system
from afinar.data.validate import fingerprint, gather, raise_if_errors, report_summary

CACHE_VERSION = 2  # 2: conversations tokenized in pieces cut at each answer (data/templates.encode)
# Below this many examples one process is faster than starting workers.
PARALLEL_FROM = 20_000


def cache_root() -> Path:
    return Path(os.environ.get("AFINAR_DATA_CACHE") or Path.home() / ".cache" / "afinar" / "tokenized")


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(data: DataSection, tokenizer) -> str:
    """Same file contents + same data section + same tokenizer and template → same key."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "data": data.model_dump(mode="json")}, sort_keys=True).encode())
    for path in [s.path for s in data.sources] + ([data.val_file] if data.val_file else []):
        if Path(path).is_file():
            digest.update(_file_digest(path).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    digest.update(json.dumps([tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token], default=str).encode())
    return digest.hexdigest()[:32]


@dataclass
class TokenizedData:
    train: object  # datasets.Dataset: input_ids, labels, length, n_trained, source
    val: object
    problems: list[Problem]
    summary: dict  # per_source, train/val example counts, token-length statistics
    fingerprint: dict
    cache: str  # "hit" | "miss"
    folder: Path

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def report(self, out=print, max_lines: int = 20) -> None:
        report_summary(self.problems, self.summary["per_source"], self.summary["train_examples"],
                       self.summary["val_examples"], self.summary["length"], out=out, max_lines=max_lines)

    def lengths(self, split: str = "train") -> list[int]:
        return list((self.train if split == "train" else self.val)["length"])


def _encode_batch(batch: dict, tokenizer, system_prompt, max_length: int, policy: str) -> dict:
    out = {"input_ids": [], "labels": [], "length": [], "n_trained": [], "full_length": []}
    for messages in batch["messages"]:
        enc = encode(tokenizer, with_system(json.loads(messages), system_prompt))
        ids, labels = enc.input_ids, enc.labels
        full = len(ids)
        if full > max_length and policy == "truncate":
            ids, labels = ids[:max_length], labels[:max_length]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["n_trained"].append(sum(1 for x in labels[1:] if x != IGNORE))
        out["full_length"].append(full)
    return out


def _tokenize_split(examples, sources: list[str], tokenizer, data: DataSection, name: str, scratch: Path):
    """One split → (Arrow dataset of kept rows, problems, length statistics); the same rules as templates.encode_examples."""
    from datasets import Dataset

    stats = {"total": len(examples), "too_long": 0, "dropped": 0, "truncated": 0, "max_tokens": 0}
    if not examples:
        return _empty_split(), [], stats
    source_index = {path: k for k, path in enumerate(sources)}
    raw = Dataset.from_dict({
        "messages": [json.dumps(e.messages, ensure_ascii=False) for e in examples],
        "source": [source_index.get(e.source, 0) for e in examples],
        "line": [e.line for e in examples],
    })
    workers = min(os.cpu_count() or 1, 4) if len(examples) >= PARALLEL_FROM else None
    encoded = raw.map(
        _encode_batch,
        batched=True,
        num_proc=workers,
        remove_columns=["messages"],
        fn_kwargs={"tokenizer": tokenizer, "system_prompt": data.system_prompt, "max_length": data.max_length,
                   "policy": data.overlength},
        cache_file_name=str(scratch / f"{name}-encoded.arrow"),
        new_fingerprint=f"{name}-encoded",
        desc=f"Tokenizando ({'entrenamiento' if name == 'train' else 'validación'})",
    )
    problems, keep = [], []
    columns = encoded.select_columns(["full_length", "n_trained", "source", "line"])
    for i, row in enumerate(columns.iter(batch_size=10_000)):
        for j, (full, trained, source, line) in enumerate(zip(row["full_length"], row["n_trained"], row["source"], row["line"])):
            stats["max_tokens"] = max(stats["max_tokens"], full)
            if full > data.max_length:
                stats["too_long"] += 1
                severity = "error" if data.overlength == "error" else "warning"
                action = {"drop": "se descarta", "truncate": "se trunca (no aprenderá a terminar aquí)",
                          "error": "sube max_length"}[data.overlength]
                problems.append(Problem(sources[source] if source < len(sources) else "", line, "D010",
                                        f"{full} tokens > max_length {data.max_length}: {action}", severity))
                if data.overlength == "drop" or (data.overlength == "truncate" and trained == 0):
                    stats["dropped"] += 1
                    continue
                stats["truncated"] += data.overlength == "truncate"
            keep.append(i * 10_000 + j)
    kept = encoded.select(keep).remove_columns(["full_length", "line"])
    return kept, problems, stats


def _empty_split():
    from datasets import Dataset, Features, List, Value

    features = Features({"input_ids": List(Value("int64")), "labels": List(Value("int64")), "length": Value("int64"),
                         "n_trained": Value("int64"), "source": Value("int64")})
    return Dataset.from_dict({name: [] for name in features}, features=features)


def _open(folder: Path, split: str):
    """A split saved by `load_or_tokenize`, memory-mapped; an empty split is not saved (datasets cannot reload it)."""
    from datasets import load_from_disk

    return load_from_disk(str(folder / split)) if (folder / split).is_dir() else _empty_split()


def load_or_tokenize(data: DataSection, tokenizer, progress: bool = True) -> TokenizedData:
    """The recipe's data, tokenized: from the cache when nothing changed, else checked, encoded and cached.

    Raises D000 (with every problem) when the data has errors; nothing is cached then."""
    from datasets import disable_progress_bars, enable_progress_bars

    key = cache_key(data, tokenizer)
    folder = cache_root() / key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") == CACHE_VERSION:
            return TokenizedData(
                _open(folder, "train"), _open(folder, "val"),
                [Problem(**p) for p in meta["problems"]], meta["summary"], meta["fingerprint"], "hit", folder,
            )

    prepared = gather(data)
    raise_if_errors(prepared)  # format errors: stop before tokenizing anything
    sources = [s.path for s in data.sources]
    if not progress:
        disable_progress_bars()
    cache_root().mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            scratch = tmp / "scratch"
            scratch.mkdir()
            train, p_train, s_train = _tokenize_split(prepared.train, sources, tokenizer, data, "train", scratch)
            val, p_val, s_val = _tokenize_split(prepared.val, sources, tokenizer, data, "val", scratch)
            problems = prepared.problems + p_train + p_val
            if prepared.train and len(train) == 0:
                problems.append(Problem(sources[0], None, "D015", f"ningún ejemplo de entrenamiento cabe en max_length={data.max_length}"))
            # The fingerprint reads sequence counts from lists: give it the kept counts without loading rows.
            prepared.train_encoded, prepared.val_encoded = range(len(train)), range(len(val))
            prepared.length_stats = {"train": s_train, "val": s_val}
            summary = {"per_source": prepared.per_source, "train_examples": len(prepared.train),
                       "val_examples": len(prepared.val), "length": prepared.length_stats}
            prepared.problems = problems
            raise_if_errors(prepared)
            for name, split in (("train", train), ("val", val)):
                if len(split):
                    split.save_to_disk(str(tmp / name))
            del train, val
            shutil.rmtree(scratch)
            meta = {"version": CACHE_VERSION, "problems": [asdict(p) for p in problems], "summary": summary,
                    "fingerprint": fingerprint(prepared, data)}
            (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    finally:
        enable_progress_bars()
    return TokenizedData(_open(folder, "train"), _open(folder, "val"), problems, summary, meta["fingerprint"], "miss", folder)

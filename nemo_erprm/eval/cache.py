"""On-disk cache of step scores keyed by (scorer fingerprint, question, steps).

Append-only JSONL (one fsync'd write per scored batch): an interrupted evaluation keeps
every batch it finished, and re-running with another aggregation or N scores nothing. Each key
is read once: a file that holds keys twice (two runs on one ``--out`` before runs took a lock)
is rewritten with the first of each when it is opened.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, Sequence

from nemo_erprm.jsonl import JsonlAppender, RecordError, iter_jsonl, repair_partial_tail, write_jsonl_atomic

Item = tuple[str, Sequence[str]]


def score_key(fingerprint: str, question: str, steps: Sequence[str]) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for part in (question, *steps):
        h.update(b"\x00" + part.encode())
    return h.hexdigest()


class ScoreCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.scores: dict[str, list[float]] = {}
        if self.path.exists():
            repair_partial_tail(self.path)
            lines = 0
            for line, rec in iter_jsonl(self.path):
                if not isinstance(rec.get("key"), str) or not isinstance(rec.get("scores"), list):
                    raise RecordError(self.path, line, "a score cache line needs 'key' (string) and 'scores' (list)")
                self.scores.setdefault(rec["key"], rec["scores"])
                lines += 1
            if lines > len(self.scores):
                write_jsonl_atomic(self.path, ({"key": k, "scores": v} for k, v in self.scores.items()))
        self._out: Optional[JsonlAppender] = None

    def score(self, fingerprint: str, items: Sequence[Item], scorer: Callable[[Sequence[Item]], list[list[float]]],
              batch_size: int = 8, progress: Optional[Callable[[int], None]] = None) -> list[list[float]]:
        """Scores of ``items``, computing (in batches, longest first) only those not cached."""
        keys = [score_key(fingerprint, q, s) for q, s in items]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.scores}.values(),
                      key=lambda i: -(len(items[i][0]) + sum(len(x) for x in items[i][1])))
        if todo and self._out is None:
            self._out = JsonlAppender(self.path)
        if progress:
            progress(len(items) - len(todo))
        for b in range(0, len(todo), batch_size):
            idx = todo[b: b + batch_size]
            out = scorer([items[i] for i in idx])
            for i, s in zip(idx, out):
                if len(s) != len(items[i][1]):
                    raise RuntimeError(f"scorer returned {len(s)} scores for {len(items[i][1])} steps")
                self.scores[keys[i]] = s
            self._out.append([{"key": keys[i], "scores": self.scores[keys[i]]} for i in idx])
            if progress:
                progress(len(idx))
        return [self.scores[k] for k in keys]

    def close(self) -> None:
        if self._out is not None:
            self._out.close()

"""The OpenELM paper's pretraining corpora as ``data.sources`` entries (about 1.8 T tokens).

Token counts: the pretraining-data table of Mehta et al., "OpenELM: An Efficient Language Model
Family with Open Training and Inference Framework" (arXiv 2404.14619), in billions of tokens; they
are the sizes the source corpora publish for the subsets used (RefinedWeb; the deduplicated PILE;
RedPajama-1T's GitHub, Books, ArXiv, Wikipedia, StackExchange and C4; Dolma v1.6's The Stack,
Reddit, peS2o, Project Gutenberg and Wikipedia + Wikibooks) and sum to 1784.3 B, the paper's
"approximately 1.8 trillion tokens". Each corpus is drawn with a weight proportional to its token
count: CoreNet reads every file of every corpus once per epoch (``general_lm``), which mixes them
in that proportion.

File layout: CoreNet's ``projects/openelm/README-pretraining.md`` (the downloaded files renamed to
numbered names), under ``data.data_root``:

    refinedweb/refinedweb-00000-of-05534.parquet ...   text column "content"
    pile/pile-00000-of-01650.parquet ...
    redpajama/{arxiv,book,github,stackexchange,wikipedia,c4}/<name>-00000-<count>.jsonl ...
    dolma/{books,pes2o,reddit,stack,wiki}/<name>-0000.json.gz ...
"""

from __future__ import annotations

from typing import Any

# name -> (kind, path template under data.data_root, file ids [start, stop), text field, tokens (B))
CORPORA: dict[str, tuple[str, str, tuple[int, int], str, float]] = {
    "refinedweb": ("parquet", "refinedweb/refinedweb-{file_id:05d}-of-05534.parquet", (0, 5534),
                   "content", 665.0),
    "pile": ("parquet", "pile/pile-{file_id:05d}-of-01650.parquet", (0, 1650), "text", 207.0),
    "redpajama_github": ("jsonl", "redpajama/github/github-{file_id:05d}-00098.jsonl", (0, 98),
                         "text", 59.0),
    "redpajama_books": ("jsonl", "redpajama/book/book-{file_id:05d}-00001.jsonl", (0, 1), "text", 26.0),
    "redpajama_arxiv": ("jsonl", "redpajama/arxiv/arxiv-{file_id:05d}-00099.jsonl", (0, 100),
                        "text", 28.0),
    "redpajama_wikipedia": ("jsonl", "redpajama/wikipedia/wiki-{file_id:05d}-00001.jsonl", (0, 1),
                            "text", 24.0),
    "redpajama_stackexchange": ("jsonl", "redpajama/stackexchange/stackexchange-{file_id:05d}-00001.jsonl",
                                (0, 1), "text", 20.0),
    "redpajama_c4": ("jsonl", "redpajama/c4/c4-{file_id:05d}-01024.jsonl", (0, 1024), "text", 175.0),
    "dolma_stack": ("jsonl", "dolma/stack/stack-v4-train-{file_id:04d}.json.gz", (0, 149), "text", 411.0),
    "dolma_reddit": ("jsonl", "dolma/reddit/reddit-v5-dedupe-pii-nsfw-toxic-{file_id:04d}.json.gz",
                     (0, 78), "text", 89.0),
    "dolma_pes2o": ("jsonl", "dolma/pes2o/pes2o_v2-{file_id:04d}.json.gz", (0, 26), "text", 70.0),
    "dolma_gutenberg": ("jsonl", "dolma/books/books-{file_id:04d}.json.gz", (0, 3), "text", 6.0),
    "dolma_wiki": ("jsonl", "dolma/wiki/en_simple_wiki_v0-{file_id:04d}.json.gz", (0, 2), "text", 4.3),
}


def total_tokens() -> float:
    """The mixture's size in tokens (the paper: about 1.8 T)."""
    return sum(entry[-1] for entry in CORPORA.values()) * 1e9


def openelm_sources() -> list[dict[str, Any]]:
    """``data.sources`` for the whole mixture, paths relative to ``data.data_root``, weights in
    billions of tokens (the pipeline normalises them)."""
    return [{"kind": kind, "name": name, "train": path, "file_ids": list(ids), "field": field,
             "weight": tokens}
            for name, (kind, path, ids, field, tokens) in CORPORA.items()]

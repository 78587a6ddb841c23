"""All processes must read the same documents: per-host copies that differ stop every process with
an error that names the files (tested on two real processes), before any batch is made."""

import json

from localhost import explicit_envs, run_processes

from elm_jax.data.agreement import differences


def _write(directory, lines_per_file):
    directory.mkdir(parents=True)
    for name, lines in lines_per_file.items():
        (directory / name).write_text("".join(json.dumps({"text": f"document {i} of {name}"}) + "\n"
                                              for i in range(lines)))


def test_processes_that_see_different_files_all_stop_and_name_them(tmp_path):
    # Each "host" has its own copy under the same relative paths; host 1's differs.
    for host, files in {0: {"a.jsonl": 3, "b.jsonl": 2}, 1: {"a.jsonl": 4, "b.jsonl": 2,
                                                            "c.jsonl": 1}}.items():
        _write(tmp_path / f"host{host}" / "data", files)
        _write(tmp_path / f"host{host}" / "shared", {"v.jsonl": 2})  # identical: accepted
    first, second = run_processes(["same_data", str(tmp_path)], explicit_envs(2, 1), timeout=300)
    assert first["error"].startswith("processes [1] see different 'train' data than process 0")
    assert second["error"].startswith("process 1 sees different 'train' data than process 0: ")
    for part in ("source '0_jsonl': files only here: data/c.jsonl",
                 "source '0_jsonl': files of another size here: data/a.jsonl",
                 "source '0_jsonl': 7 documents here, 5 on process 0", "shared storage"):
        assert part in second["error"], part


def test_differences_in_words():
    reference = {"web": {"documents": 10, "files": {f"f{i}": 1 for i in range(8)}},
                 "books": {"documents": 1, "files": {}}}
    mine = {"web": {"documents": 10, "files": {f"f{i}": 1 for i in range(1)}},
            "code": {"documents": 1, "files": {}}}
    assert differences(reference, mine) == [
        "source 'books' only on process 0",
        "source 'code' only on this one",
        "source 'web': files only on process 0: f1, f2, f3, f4, f5 and 2 more",
    ]
    assert differences(reference, reference) == []

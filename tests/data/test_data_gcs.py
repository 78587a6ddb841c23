"""Data sources in a ``gs://`` bucket (a local GCS emulator, see tests/gcs_emulator.py): every file
format, globs and file-id ranges read the same documents as the local files, and the pipeline
delivers batches from them. The reading runs in a child process started with the emulator's
environment, so no client can reach a real endpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

from formats import KINDS, write_source
from gcs_emulator import emulator

ROOT = Path(__file__).resolve().parents[2]

READ = """
import json, sys
from elm_jax.config import default_config, from_config_dict
from elm_jax.data import pipeline
sources, tokenizer = json.loads(sys.argv[1]), sys.argv[2]
texts = {}
for src in sources:
    cd = default_config()
    cd.model.vocab_size, cd.model.num_layers, cd.model.model_dim, cd.model.head_dim = 640, 2, 64, 16
    cd.data.sources, cd.data.tokenizer, cd.data.pad_id = [src], tokenizer, 512
    cd.data.seq_len, cd.data.min_chars, cd.data.min_tokens, cd.train.batch_size = 32, 0, 0, 2
    config = from_config_dict(cd)
    texts[src["name"]] = sorted(pipeline.document_texts(config, "train"))
    batch = next(iter(pipeline.make_iterator(config, "train", num_epochs=1)))
    texts[src["name"] + ":tokens"] = int((batch["inputs"] != 512).sum())
print(json.dumps(texts))
"""


def test_every_format_reads_from_a_bucket_as_from_local_files(documents, spm_model, tmp_path):
    docs = [f"doc {i} café — {d}" for i, d in enumerate(documents(23, seed=3, words=(3, 40)))]
    local = {kind: write_source(tmp_path / kind, kind, docs) for kind in KINDS}
    with emulator() as emu:
        emu.create_bucket("corpora")
        remote = []
        for kind, src in local.items():
            for path in (tmp_path / kind).iterdir():
                emu.upload("corpora", f"{kind}/{path.name}", path.read_bytes())
            remote.append({**src, "train": src["train"].replace(str(tmp_path), "gs://corpora")})
        assert all(src["train"].startswith("gs://corpora/") for src in remote)
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | emu.env | {
            "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "ELM_JAX_CACHE": str(tmp_path / "cache")}
        out = subprocess.run([sys.executable, "-c", READ, json.dumps(remote), str(spm_model)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    texts = json.loads(out.stdout)
    assert not (tmp_path / "gs:").exists() and not (tmp_path / "gs:").is_symlink()
    for kind in KINDS:
        assert texts[kind] == sorted(docs), kind
        assert texts[f"{kind}:tokens"] > 0, kind

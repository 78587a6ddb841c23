"""Command-line mistakes end in one line on stderr naming the fix, exit status 2, no traceback:
the ``--config`` file and its overrides, generation settings, outputs that exist, run directories
that cannot be written."""

import pytest
from cli_helpers import VOCAB, run_module, write_tokenizer

from elm_jax.config import ModelConfig


def one_line_error(out) -> str:
    """The single ``error: ...`` line of a failed command (exit 2, nothing else on stderr)."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def test_unknown_override_of_the_default_config_suggests_the_field():
    # no --config: the default experiment, which ml_collections used to load (and fail) on import
    line = one_line_error(run_module("elm_jax.cli.train", "--config.model.num_layer=3"))
    assert line == ("error: --config.model.num_layer: the config has no field model.num_layer; "
                    "did you mean model.num_layers?")


EXPERIMENTS = {
    "syntax.py": "def get_config(:\n",
    "no_get_config.py": "CONFIG = {}\n",
    "fine.py": "from elm_jax.config import default_config\n\n"
               "def get_config(arg=None):\n    return default_config()\n",
}


@pytest.mark.parametrize(("name", "overrides", "expected"), [
    ("missing.py", [], "{path}: no such file; pass an experiment file"),
    ("", [], "{path} is a directory; pass one experiment file in it (fine.py, no_get_config.py, "
             "syntax.py)"),
    ("syntax.py", [], "{path}: syntax error at line 1: invalid syntax; fix the file"),
    ("no_get_config.py", [], "{path} defines no get_config()"),
    ("fine.py", ["--config.model.foo=3"], "--config.model.foo: the config has no field model.foo; "
                                          "the fields of model are attention_impl, "),
])
def test_config_file_problems_are_one_line(tmp_path, name, overrides, expected):
    for file, text in EXPERIMENTS.items():
        (tmp_path / file).write_text(text)
    path = str(tmp_path / name) if name else str(tmp_path)
    line = one_line_error(run_module("elm_jax.cli.describe", "--config", path, *overrides))
    assert line.startswith("error: " + expected.format(path=f"--config {path}")), line


def test_a_bad_override_value_keeps_absls_usage_error():
    out = run_module("elm_jax.cli.describe", "--config.model.num_layers=many")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "FATAL Flags parsing error: flag --config.model.num_layers=many" in out.stderr


def test_bad_top_p_is_refused_before_the_model_loads(tmp_path):
    # (top_p=0 takes the same check: tests/infer/test_sampling.py)
    line = one_line_error(run_module("elm_jax.cli.generate", f"--checkpoint={tmp_path / 'none'}",
                                     "--prompt=hi", "--top_p=2"))
    assert line == "error: top_p=2.0 must be in (0, 1] (1 disables it)"


@pytest.fixture
def hf_model(random_hf_checkpoint):
    cfg = ModelConfig(vocab_size=VOCAB + 10, num_layers=1, model_dim=32, head_dim=16,
                      num_gqa_groups=1, ffn_dim_divisor=32, max_context_length=64)
    path, _, _ = random_hf_checkpoint(cfg)
    write_tokenizer(path / "tokenizer.model")
    return path


def test_an_empty_prompt_without_bos_is_refused_before_generating(hf_model):
    out = run_module("elm_jax.cli.generate", f"--checkpoint={hf_model}", "--prompt=To be",
                     "--prompt=", "--noadd_bos", "--max_new_tokens=4")
    line = one_line_error(out)
    assert line == ("error: prompt 2 ('') has no tokens to continue; give it some text, or drop "
                    "--noadd_bos so that it starts with BOS")
    assert out.stdout == ""  # refused before the first prompt was generated


def test_max_new_tokens_beyond_the_context_is_refused_before_allocating(hf_model):
    line = one_line_error(run_module("elm_jax.cli.generate", f"--checkpoint={hf_model}",
                                     "--prompt=To be", "--max_new_tokens=100000000"))
    assert line.startswith("error: a prompt of ") and line.endswith(
        "tokens plus max_new_tokens=100000000 exceeds the model's context of 64 tokens; ask for "
        f"at most {64 - int(line.split()[4])} new tokens")


def test_convert_refuses_an_existing_output_before_loading(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    line = one_line_error(run_module("elm_jax.cli.convert", f"--input={tmp_path / 'no_model'}",
                                     f"--output={tmp_path / 'out'}"))
    assert line == (f"error: {tmp_path / 'out'} exists and is not empty; choose a new output "
                    "directory (nothing was written)")


def test_train_refuses_a_run_directory_it_cannot_write():
    # /sys refuses new entries even to root (a read-only directory would not stop root); checked
    # first, before the default experiment's data is prepared
    line = one_line_error(run_module("elm_jax.cli.train", "--config.train.run_dir=/sys/elm_jax_run"))
    assert line.startswith("error: cannot write to the run directory /sys/elm_jax_run (")
    assert line.endswith("); choose a writable --config.train.run_dir")

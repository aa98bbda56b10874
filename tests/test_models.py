"""Every registered architecture, found by the registry and built from its experiment spec (the data
decides its shapes, the model's own ``example_input`` its inputs): output shape, overfitting one
batch, save/load, seeded determinism. Then hand-checked cases of particular architectures."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.conftest import EXPERIMENTS, save_checkpoint, tiny
from workbench.models.supervised import SupervisedModule
from workbench.registry import UnknownNameError, available_models, create_model, load_module
from workbench.spec import load_spec
from workbench.train import data_from_spec, module_from_spec

# The experiment spec of each architecture (the first that names it): adding an architecture is
# models/x.py plus experiments/x.yaml, and these tests find both.
SPEC_OF: dict[str, Path] = {}
for _path in sorted(EXPERIMENTS.glob("*.yaml")):
    SPEC_OF.setdefault(yaml.safe_load(_path.read_text())["model"]["name"], _path)
# Smaller widths for the known architectures, for speed only; a new one is built as its spec says.
SMALL = {
    "cnn": {"width": 8, "hidden": 32},
    "distilled_cnn": {"width": 8, "hidden": 32},
    "transformer": {"d_model": 16, "heads": 2},
    "autoencoder": {"code": 8, "width": 8},
    "gan": {"latent": 16, "width": 8, "n_judged": 20},
    "dqn": {"hidden": 32},
}
SMALL_DATA = {"adding": {"data.options.length": 10}}  # sequences of 10 steps, not 100
# Spec fields per architecture: MiniLM's 22 M pretrained weights stay frozen here (a single batch
# of random labels makes Adam at 3e-3 diverge in its layers; its head fits them alone).
SMALL_SPEC = {"minilm": {"backbone.freeze": "all"}}
_DATA: dict[Path, object] = {}


def _from_spec(name: str, checkpoint: str, **hparams):
    """(module, data): registered model ``name`` built by its spec's path, on 200 samples."""
    path = SPEC_OF[name]
    raw = yaml.safe_load(path.read_text())["model"].get("params") or {}
    refs = {f"model.params.{k}": checkpoint for k in raw if k.endswith("checkpoint")}
    if (yaml.safe_load(path.read_text()).get("backbone") or {}).get("source"):
        refs |= {"backbone.source": checkpoint, "backbone.model": "cnn"}  # a 28×28 cnn
    family = yaml.safe_load(path.read_text())["data"]["name"]
    sizes = {"data.max_samples": 200, **SMALL_DATA.get(family, {}), **SMALL_SPEC.get(name, {})}
    spec = load_spec(path, tiny(Path("unused"), **refs, **sizes))
    if path not in _DATA:
        _DATA[path] = data_from_spec(spec)
    data = _DATA[path]
    return module_from_spec(spec, data, **{**SMALL.get(name, {}), **hparams}), data


def test_every_registered_model_has_an_experiment():
    assert set(available_models()) <= set(SPEC_OF), "add experiments/<name>.yaml"


# Constructor arguments the data would supply, for the hand-checked cases below.
SHAPES = {
    "cnn": ({"input_shape": (1, 8, 8), "num_classes": 10}, 10),
    "distilled_cnn": ({"input_shape": (1, 8, 8), "num_classes": 10}, 10),
    "mlp": ({"input_shape": (30,), "num_classes": 2}, 2),
    "rnn": ({"input_shape": (12, 3), "num_classes": 4}, 4),
    "lstm": ({"input_shape": (12, 3), "num_classes": 4}, 4),
    "gru": ({"input_shape": (12, 3), "num_classes": 4}, 4),
    "transformer": ({"input_shape": (12, 3), "num_classes": 4, "d_model": 16, "heads": 2}, 4),
    "autoencoder": ({"input_shape": (1, 8, 8), "code": 4, "width": 8}, None),
    "gan": ({"input_shape": (1, 8, 8), "latent": 8, "width": 8, "n_judged": 20}, None),
    "dqn": ({"input_shape": (4,), "num_classes": 2, "hidden": 32}, 2),
}


@pytest.fixture(scope="module")
def checkpoint_8x8(tmp_path_factory) -> str:
    """A saved 8×8 ``cnn`` checkpoint: teacher of ``distilled_cnn``, judge of ``gan``."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    save_checkpoint(create_model("cnn", input_shape=(1, 8, 8), num_classes=10, width=8), path)
    return str(path)


def _build(name: str, checkpoint: str, **hparams):
    extra = {
        "distilled_cnn": {"teacher_checkpoint": checkpoint},
        "gan": {"judge_checkpoint": checkpoint},
    }
    return create_model(name, **{**SHAPES[name][0], **extra.get(name, {}), **hparams})


def _inputs(name: str, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if name == "gan":
        return torch.randn(n, SHAPES["gan"][0]["latent"], generator=generator)
    shape = SHAPES[name][0]["input_shape"]
    if name == "autoencoder":
        return torch.rand(n, *shape, generator=generator)
    return torch.randn(n, *shape, generator=generator)


@pytest.mark.parametrize("name", available_models())
def test_output_shape(name: str, teacher_checkpoint: str):
    model, data = _from_spec(name, teacher_checkpoint)
    model.eval()
    inputs = model.example_input(data, 5)
    with torch.no_grad():
        outputs = model(inputs)
    assert outputs.shape[0] == 5 and bool(torch.isfinite(outputs).all())
    kwargs = data.model_kwargs()  # what the data says the model must answer
    if kwargs.get("task") == "regression":
        assert outputs.shape[1:] == (1,)
    elif name == "simclr":  # a representation, what a transfer model starts from
        assert outputs.shape[1:] == (model.hparams.code,)
    elif name not in ("autoencoder", "gan"):  # a logit per class, a Q-value per action
        assert outputs.shape[1:] == (kwargs["num_classes"],)
    if name in ("autoencoder", "gan"):  # images in [0, 1], of the data's shape
        assert outputs.shape[1:] == data.split("test")[0].shape[1:]
        assert 0.0 <= float(outputs.min()) and float(outputs.max()) <= 1.0


def _model_class(name: str) -> type:
    from workbench.registry import model_class

    return model_class(name)


def _arguments(name: str) -> set[str]:
    from workbench.registry import constructor_arguments

    return constructor_arguments(name)


def _fit_one_batch(parameters, loss_fn, steps: int = 150, lr: float = 3e-3) -> float:
    optimiser = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimiser.step()
    return float(loss)


SUPERVISED = [n for n in available_models() if issubclass(_model_class(n), SupervisedModule)]


@pytest.mark.parametrize("name", SUPERVISED)
def test_a_supervised_model_overfits_a_single_batch(name: str, teacher_checkpoint: str):
    """Classifiers reach zero training error on 16 inputs with random labels; regressors (the
    adding problem's) fit 16 random targets."""
    torch.manual_seed(0)
    no_dropout = {"dropout": 0.0} if "dropout" in _arguments(name) else {}
    model, data = _from_spec(name, teacher_checkpoint, **no_dropout)
    inputs = model.example_input(data, 16)
    kwargs = data.model_kwargs()
    seeded = torch.Generator().manual_seed(1)
    model.train()
    if kwargs["task"] == "classification":
        targets = torch.randint(0, kwargs["num_classes"], (16,), generator=seeded)
        loss = _fit_one_batch(model.parameters(), lambda: F.cross_entropy(model(inputs), targets))
        model.eval()
        assert loss < 0.05 and bool((model(inputs).argmax(1) == targets).all())
    else:
        targets = torch.rand(16, generator=seeded)
        loss = _fit_one_batch(
            model.parameters(), lambda: F.mse_loss(model.predict(inputs), targets), 300
        )
        assert loss < 1e-3


@pytest.mark.parametrize("name", ["transformer", "mlp"])  # lstm: its spec is a regression
def test_a_regressor_overfits_a_single_batch(name: str):
    torch.manual_seed(0)
    config = {**SHAPES[name][0], "num_classes": 1, "task": "regression"}
    model = create_model(name, **config, **({"dropout": 0.0} if name != "lstm" else {}))
    inputs = _inputs(name, 32)
    targets = torch.rand(32, generator=torch.Generator().manual_seed(1))
    model.train()
    loss = _fit_one_batch(model.parameters(), lambda: F.mse_loss(model.predict(inputs), targets))
    assert loss < 1e-3


def test_the_autoencoder_overfits_a_single_batch(checkpoint_8x8: str):
    torch.manual_seed(0)
    model = _build("autoencoder", checkpoint_8x8, code=16)
    images = _inputs("autoencoder", 16)
    model.train()
    loss = _fit_one_batch(model.parameters(), lambda: F.mse_loss(model(images), images), 300)
    # Uniform noise has variance 1/12 ≈ 0.083 per pixel; the fit must be far below that.
    assert loss < 0.01


def test_the_gan_discriminator_separates_a_single_batch(checkpoint_8x8: str):
    torch.manual_seed(0)
    model = _build("gan", checkpoint_8x8)
    real = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    fake = model(_inputs("gan", 16)).detach()
    labels = torch.cat([torch.ones(16), torch.zeros(16)])
    both = torch.cat([real, fake])
    disc = model.discriminator.train()
    loss = _fit_one_batch(
        disc.parameters(), lambda: F.binary_cross_entropy_with_logits(disc(both), labels)
    )
    assert loss < 0.05


def test_the_q_network_fits_a_batch_of_targets(checkpoint_8x8: str):
    torch.manual_seed(0)
    model = _build("dqn", checkpoint_8x8)
    states = _inputs("dqn", 32)
    targets = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    loss = _fit_one_batch(model.net.parameters(), lambda: F.mse_loss(model(states), targets), 300)
    assert loss < 1e-3


@pytest.mark.parametrize("name", available_models())
def test_checkpoint_round_trip_gives_identical_outputs(
    name: str, teacher_checkpoint: str, tmp_path: Path
):
    pl.seed_everything(5, verbose=False)
    model, data = _from_spec(name, teacher_checkpoint)
    model.eval()
    path = tmp_path / "m.ckpt"
    save_checkpoint(model, path)
    pl.seed_everything(6, verbose=False)  # a different seed: weights must come from the file
    loaded = load_module(path, name)
    inputs = model.example_input(data, 4)
    assert dict(loaded.hparams) == dict(model.hparams)
    assert torch.equal(model(inputs), loaded(inputs))


@pytest.mark.parametrize("name", available_models())
def test_same_seed_same_weights(name: str, teacher_checkpoint: str):
    pl.seed_everything(3, verbose=False)
    first, _ = _from_spec(name, teacher_checkpoint)
    pl.seed_everything(3, verbose=False)
    second, _ = _from_spec(name, teacher_checkpoint)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_transformer_ignores_padded_steps():
    torch.manual_seed(0)
    model = create_model("transformer", input_shape=(10, 3), num_classes=4, d_model=16, heads=2)
    model.eval()
    sequences = torch.randn(2, 10, 3)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 6:] = True  # the first sequence has 6 real steps, the rest is padding
    changed = sequences.clone()
    changed[0, 6:] = 100.0  # whatever sits in the padding must not matter
    with torch.no_grad():
        a = model.net(sequences, padding_mask=mask)
        b = model.net(changed, padding_mask=mask)
        short = model.net(sequences[:1, :6])  # the same sequence without padding
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:1], short, atol=1e-5, rtol=1e-5)


def test_sinusoidal_positions_by_hand():
    from workbench.models.transformer import sinusoidal_positions

    table = sinusoidal_positions(3, 4)
    # dim 4: frequencies 1 and 1e-2; PE[t] = [sin t, cos t, sin t/100, cos t/100]
    t = torch.arange(3.0)
    expected = torch.stack([t.sin(), t.cos(), (t / 100).sin(), (t / 100).cos()], 1)
    torch.testing.assert_close(table, expected)


def test_double_dqn_target_by_hand(checkpoint_8x8: str):
    model = _build("dqn", checkpoint_8x8, gamma=0.5)

    class Lookup(torch.nn.Module):  # Q-values of two states, indexed by the first feature
        def __init__(self, table):
            super().__init__()
            self.table = table

        def forward(self, states):
            return torch.stack([self.table[int(s[0])] for s in states])

    model.net = Lookup({0: torch.tensor([1.0, 3.0]), 1: torch.tensor([2.0, 0.0])})
    model.target = Lookup({0: torch.tensor([10.0, 20.0]), 1: torch.tensor([30.0, 40.0])})
    states = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    actions = torch.tensor([1, 0])
    rewards = torch.tensor([1.0, 1.0])
    terminal = torch.tensor([0.0, 1.0])
    # Row 0: Q(s,a)=3; next state 1: online argmax is action 0, target value 30 → 1 + 0.5·30 = 16.
    # Row 1: Q(s,a)=2; terminal → target 1.
    next_states = torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 0]])
    loss = model.td_loss(states, actions, rewards, next_states, terminal)
    expected = F.smooth_l1_loss(torch.tensor([3.0, 2.0]), torch.tensor([16.0, 1.0]))
    assert float(loss) == pytest.approx(float(expected))


def test_gan_judge_detects_mode_collapse(checkpoint_8x8: str):
    model = _build("gan", checkpoint_8x8).eval()

    class SeesZero(torch.nn.Module):  # a judge that sees the digit 0 everywhere, with certainty
        def forward(self, images):
            return F.one_hot(torch.zeros(len(images), dtype=torch.long), 10).float() * 50

    model.judge = SeesZero()
    scores = model.judge_samples(_inputs("gan", 20))
    assert float(scores["confidence"]) == pytest.approx(1.0)
    assert float(scores["min_class_share"]) == 0.0 and float(scores["shares"][0]) == 1.0


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: .*cnn.*dqn.*gan.*lstm.*transformer"):
        create_model("perceptron9000")


def test_gan_exports_a_moving_average_of_the_generator(checkpoint_8x8: str):
    model = _build("gan", checkpoint_8x8, ema_decay=0.75)
    before = [p.clone() for p in model.net.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)  # as if an optimiser step had moved every weight by +1
    model._update_average()
    for average, old, live in zip(
        model.net.parameters(), before, model.generator.parameters(), strict=True
    ):
        torch.testing.assert_close(average, 0.75 * old + 0.25 * live)
        assert not average.requires_grad  # only the live generator is optimised


@pytest.mark.parametrize("base", ["autoencoder", "simclr", "cnn"])
def test_a_backbone_starts_a_transfer_model_with_its_weights(base: str):
    """The backbone blocks of a pretrained model compute, inside a transfer model, exactly what
    they computed in the model they came from (autoencoder and SimCLR: the encoder's code)."""
    pl.seed_everything(0, verbose=False)
    shapes = {"autoencoder": {"code": 4, "width": 8}, "simclr": {"code": 4, "width": 8},
              "cnn": {"width": 8}}  # fmt: skip
    pretrained = create_model(base, input_shape=(1, 8, 8), **shapes[base]).eval()
    model = create_model(
        "transfer", input_shape=(1, 8, 8), num_classes=3, base=base,
        base_params=dict(pretrained.hparams),
    )  # fmt: skip
    model.start_from(pretrained)
    model.eval()
    images = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        features = images
        for block in model.net.blocks:
            features = block(features)
        if base == "cnn":
            expected = pretrained.net.features(images)
        else:
            expected = pretrained.net.encoder(images)
        assert torch.equal(features, expected)
        assert model(images).shape == (4, 3)


def test_gan_discriminator_with_spectral_norm_has_unit_spectral_norm(checkpoint_8x8: str):
    model = _build("gan", checkpoint_8x8, spectral_norm=True)
    disc = model.discriminator.train()
    images = torch.rand(8, 1, 8, 8)
    for _ in range(20):  # power iterations converge while the layer is used in training mode
        disc(images)
    first = disc.net[0]
    assert hasattr(first, "parametrizations")
    top = torch.linalg.matrix_norm(first.weight.detach().flatten(1), ord=2)
    assert float(top) == pytest.approx(1.0, abs=0.05)


def test_a_diverged_gan_stops_with_floating_point_error(checkpoint_8x8: str, tmp_path: Path):
    """The GAN logs two losses and no ``train/loss``: a NaN in either still stops the run."""
    from workbench.registry import create_data
    from workbench.spec import TrainerSpec
    from workbench.train import fit

    data = create_data("digits", seed=0, batch_size=64, normalize=False)
    model = _build("gan", checkpoint_8x8)
    with torch.no_grad():
        model.discriminator.net[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"train/d_loss became nan"):
        fit(model, data, TrainerSpec(max_epochs=3, accelerator="cpu"), tmp_path, "val/quality")


def test_gan_discriminator_takes_extra_layers(checkpoint_8x8: str):
    model = _build("gan", checkpoint_8x8, d_extra_layers=2)
    convs = [m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32]  # width 8: w, 2w, then 4w each
    assert model.discriminator(torch.rand(5, 1, 8, 8)).shape == (5,)
    with pytest.raises(ValueError, match="d_extra_layers: must be 0 or more; got -1"):
        _build("gan", checkpoint_8x8, d_extra_layers=-1)


def test_infogan_codes_are_the_one_hot_argmax_of_the_first_noise_entries(checkpoint_8x8: str):
    from workbench.models.gan import Generator

    model = _build("gan", checkpoint_8x8, info_codes=3).eval()
    plain = Generator((1, 8, 8), latent=8, width=8).eval()  # same weights, no codes
    plain.load_state_dict(model.net.state_dict())
    noise = _inputs("gan", 6)
    by_hand = torch.cat([F.one_hot(noise[:, :3].argmax(1), 3).float(), noise[:, 3:]], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(noise), plain(by_hand))
        assert not torch.allclose(model(noise), plain(noise))


def test_infogan_recovers_its_codes_after_a_short_training(checkpoint_8x8: str, tmp_path: Path):
    """Trained through the real Trainer, the discriminator's code head tells the generator's
    four categories apart far above chance (25 %), and each epoch draws one row per code."""
    from workbench.registry import create_data

    pl.seed_everything(0)
    data = create_data("digits", seed=0, batch_size=32, normalize=False)
    model = _build("gan", checkpoint_8x8, info_codes=4, lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    noise = torch.randn(400, 8, generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        _, code_logits = model.discriminator.with_codes(model.generator(noise))
    accuracy = float((code_logits.argmax(1) == noise[:, :4].argmax(1)).float().mean())
    assert accuracy > 0.9
    figure = model.epoch_figures()["codes"]
    assert len(figure.axes) == 4 * 8  # 4 codes × 8 fixed noise vectors


@pytest.mark.parametrize("codes", [1, 8, -2])
def test_infogan_codes_must_leave_room_for_noise(checkpoint_8x8: str, codes: int):
    with pytest.raises(ValueError, match=rf"info_codes: must be 0 .* latent - 1 = 7; got {codes}"):
        _build("gan", checkpoint_8x8, info_codes=codes)


@pytest.mark.parametrize("name", ["gan", "dqn"])
def test_export_feeds_the_network_what_it_takes(name: str, checkpoint_8x8: str, tmp_path: Path):
    """A GAN's exported generator takes noise, not test images; the InfoGAN code path (argmax,
    one-hot) survives tracing and ONNX with a dynamic batch."""
    from workbench.deploy.export import (
        export_onnx,
        export_torchscript,
        onnx_max_abs_difference,
    )

    model = _build(name, checkpoint_8x8, **({"info_codes": 3} if name == "gan" else {})).eval()
    inputs = model.example_input(None, 64)
    assert inputs.shape == ((64, 8) if name == "gan" else (64, 4))
    scripted = torch.jit.load(str(export_torchscript(model.net, inputs[:2], tmp_path / "m.pt")))
    with torch.no_grad():
        torch.testing.assert_close(scripted(inputs), model.net(inputs))
    onnx_path = export_onnx(model.net, inputs[:2], tmp_path / "m.onnx")
    assert onnx_max_abs_difference(onnx_path, model.net, inputs) <= 1e-4

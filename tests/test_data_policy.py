"""Nothing raw in the logs: ``tracking.data_policy`` (raw, synthetic, none) on every logging path
that could carry data rows, identifier columns that never reach the store, quasi-identifiers
generalised into bins and a k-anonymity check before any training.

The end-to-end tests plant a marker in one table cell and an identifier column of unique values,
run a real study (model logging, explanations, the HTML report) and scan the whole store for
them: every file under the root (zip archives member by member, ``.npz`` arrays value by value)
and every value of every table of both SQLite databases. The marker and the identifiers are made
at random when the tests run, so they cannot reach the store through the tests' own source (the
run's ``environment/diff.patch`` holds the working tree's uncommitted changes).
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.spec import SpecError, load_spec

ROWS = 300
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


# --- the sanitising step -----------------------------------------------------------------------
def test_each_policy_gives_the_rows_synthetic_rows_or_nothing():
    from workbench.tracking import sanitize

    rng = np.random.default_rng(0)
    data = rng.normal([0.0, 100.0, -5.0], [1.0, 20.0, 0.1], size=(500, 3)).astype(np.float32)
    rows = data[:4]
    assert sanitize(rows, "raw") is rows
    assert sanitize(rows, "none") is None
    fake = sanitize(rows, "synthetic", seed=1, reference=data)
    assert fake.shape == rows.shape and fake.dtype == rows.dtype
    assert not (fake[:, None, :] == data[None, :, :]).all(-1).any()  # no data row, copied
    assert not np.isin(fake, data).any()  # nor any single value of one
    np.testing.assert_array_equal(fake, sanitize(rows, "synthetic", seed=1, reference=data))
    many = sanitize(data, "synthetic", seed=2)  # per feature: each column keeps its scale
    assert (np.abs(many.mean(0) - data.mean(0)) < 4 * data.std(0) / np.sqrt(500)).all()
    np.testing.assert_allclose(many.std(0), data.std(0), rtol=0.2)
    with pytest.raises(ValueError, match="data_policy: one of raw, synthetic, none"):
        sanitize(rows, "anonymised")
    with pytest.raises(ValueError, match="reference"):
        sanitize(rows, "synthetic", reference=data[:, :2])


def test_synthetic_codes_stay_in_range_and_tables_keep_their_columns():
    from workbench.tracking import synthetic_like

    tokens = np.random.default_rng(0).integers(5, 50, size=(100, 8))
    fake = synthetic_like(tokens[:3], reference=tokens)
    assert fake.dtype == tokens.dtype and fake.min() >= 5 and fake.max() <= 49
    frame = pd.DataFrame({"name": ["ann", "bob", "cy"], "age": [31.0, 47.0, 29.0]})
    fake_frame = synthetic_like(frame, seed=3)
    assert list(fake_frame.columns) == ["name", "age"]
    assert fake_frame["age"].dtype == frame["age"].dtype
    assert not set(fake_frame["name"]) & set(frame["name"])
    assert not set(fake_frame["age"]) & set(frame["age"])


def test_a_report_of_data_rows_is_refused_under_synthetic(tmp_path: Path):
    from types import SimpleNamespace

    from workbench import tracking

    store = tracking.open_store(tmp_path / "mlruns", "refuse")
    run = tracking.start_run(store, "r", {})
    report = SimpleNamespace(settings={"rows": "test"})
    with pytest.raises(ValueError, match="explains data rows"):
        tracking.log_explanation(store, run, report, policy="synthetic")
    assert store.client.list_artifacts(run) == []


@pytest.mark.parametrize("policy", ["raw", "synthetic", "none"])
def test_served_inputs_are_recorded_as_the_policy_allows(tmp_path: Path, policy: str):
    from workbench.deploy.recording import Recorder, read_recorded, recorded_files

    rows = np.random.default_rng(0).normal(size=(3, 4)).round(6).tolist()
    request = json.dumps({"inputs": rows}).encode()
    recorder = Recorder(tmp_path, flush_s=0.05, policy=policy)
    recorder.add(request, b'{"predictions": [0, 1, 1]}')
    recorder.close()
    (line,) = recorded_files(tmp_path)[0].read_bytes().splitlines()
    record = json.loads(line)
    assert record["response"] == {"predictions": [0, 1, 1]} and record["t"] > 0
    if policy == "raw":
        assert record["request"] == {"inputs": rows}
    elif policy == "synthetic":
        inputs, outputs, _ = read_recorded(tmp_path)
        assert inputs.shape == (3, 4) and outputs.shape == (3,)
        assert not np.isin(np.asarray(rows, np.float32), inputs).any()
    else:
        assert record["request"] == {"rows": 3}


# --- tables: identifiers, quasi-identifiers, k-anonymity ---------------------------------------
def _table(path: Path, marker: float | None = None, at: int = 0) -> tuple[Path, str]:
    """A table of ROWS people: an ``email`` identifier (unique, made of a random token), ``age``
    and ``zip`` quasi-identifiers, three features (``balance`` holds ``marker`` in row ``at``)
    and a yes/no label. The path and the token."""
    rng = np.random.default_rng(7)
    token = uuid.uuid4().hex[:12]
    x = rng.normal(size=(ROWS, 2))
    frame = pd.DataFrame(
        {
            "email": [f"{token}-{i:04d}@mail.test" for i in range(ROWS)],
            "age": rng.integers(18, 90, ROWS),
            "zip": rng.integers(10_000, 99_999, ROWS),
            "f1": x[:, 0],
            "f2": x[:, 1],
            "balance": rng.normal(50_000, 10_000, ROWS).round(2),
            "label": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),
        }
    )
    if marker is not None:
        frame.loc[at, "balance"] = marker
    frame.to_csv(path, index=False)
    return path, token


def _spec(table: Path, root: Path, policy: str = "raw", **data):
    raw = {
        "name": "policy",
        "seed": 0,
        "data": {
            "name": "csv",
            "path": str(table),
            "options": {"target": "label"},
            "batch_size": 32,
            "identifiers": ["email"],
            "quasi_identifiers": {"age": 3, "zip": 2},
            "k_anonymity": 5,
            **data,
        },
        "model": {"name": "mlp"},
        "trainer": {"max_epochs": 1, "progress_bar": False},
        "study": {
            "trials": 1,
            "metric": "val/loss",
            "direction": "minimize",
            "confirm": {"top_k": 0},
        },  # fmt: skip
        "explain": {"n_images": 3, "background": 16, "shap_samples": 20, "lime_samples": 50},
        "tracking": {"root": str(root), "log_models": "all", "data_policy": policy},
    }
    return load_spec(raw)


def test_identifiers_are_dropped_and_quasi_identifiers_become_training_split_bins(
    tmp_path: Path,
):
    from workbench.train import data_from_spec

    table, _ = _table(tmp_path / "people.csv")
    data = data_from_spec(_spec(table, tmp_path / "mlruns", normalize=False))
    data.setup()
    assert data.feature_names == ["age", "zip", "f1", "f2", "balance"]  # no email
    train = data.split("train")[0].numpy()
    ages = train[:, 0]
    assert set(np.unique(ages)) <= {0.0, 1.0, 2.0} and set(np.unique(train[:, 1])) <= {0.0, 1.0}
    counts = np.bincount(ages.astype(int))  # equal-frequency on the training split (ties aside)
    assert counts.min() > 0.7 * len(ages) / 3
    original = pd.read_csv(table)["age"].to_numpy()
    assert data.bin_edges_["age"].shape == (2,)
    assert original.min() < data.bin_edges_["age"][0] < data.bin_edges_["age"][1] < original.max()


def test_identifier_and_quasi_identifier_columns_must_exist_and_are_for_tables(tmp_path: Path):
    from workbench.train import data_from_spec

    table, _ = _table(tmp_path / "people.csv")
    root = tmp_path / "mlruns"
    with pytest.raises(SpecError, match=r"data.identifiers: \['mail'\] not among"):
        data_from_spec(_spec(table, root, identifiers=["mail"]))
    with pytest.raises(SpecError, match=r"data.quasi_identifiers: \['postcode'\] not among"):
        data_from_spec(_spec(table, root, quasi_identifiers={"postcode": 3}))
    spec = load_spec({"name": "x", "data": {"name": "digits", "identifiers": ["id"]}})
    with pytest.raises(SpecError, match="data.identifiers: applies to tables only"):
        data_from_spec(spec)


def test_a_table_that_is_not_k_anonymous_stops_before_any_store_is_touched(tmp_path: Path):
    from workbench.study import run_study

    table, _ = _table(tmp_path / "people.csv")
    root = tmp_path / "mlruns"
    spec = _spec(table, root, quasi_identifiers={"age": 10, "zip": 10}, k_anonymity=4)
    with pytest.raises(SpecError) as failure:
        run_study(spec)
    message = str(failure.value)
    assert message.startswith("data.k_anonymity: the table is not 4-anonymous")
    assert "['age', 'zip']" in message and "bins [10, 10]" in message
    assert re.search(r"the smallest [123]\b", message)
    assert not root.exists()  # no database, no artifact, no checkpoint folder


# --- a whole study, scanned --------------------------------------------------------------------
def _planted(tmp_path: Path):
    """The table with its marker in the ``balance`` of the first test row (the split depends on
    the labels and the seed only, so planting it keeps the row where it is), and the values the
    marker takes in the store: itself (explanations show inputs in their own units) and
    standardised (a model's input example)."""
    from workbench.train import data_from_spec

    table, _ = _table(tmp_path / "people.csv")
    data = data_from_spec(_spec(table, tmp_path / "unused"))
    first = data.to_pixels(data.split("test")[0][:1])[0].numpy()
    at = int(np.argmin(np.abs(pd.read_csv(table)["f1"].to_numpy() - first[2])))
    marker = float(np.random.default_rng().integers(900_000, 999_000)) + 0.321
    table, token = _table(table, marker, at)
    planted = data_from_spec(_spec(table, tmp_path / "unused"))
    standardised = float(planted.split("test")[0][0, 4])
    assert abs(float(planted.to_pixels(planted.split("test")[0][:1])[0, 4]) - marker) < 0.5
    return table, token, marker, standardised


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """One real study per policy over the same planted table: policy → (root, result, token,
    marker, standardised marker)."""
    from workbench.study import run_study

    base = tmp_path_factory.mktemp("policies")
    table, token, marker, standardised = _planted(base)
    found = {}
    for policy in ("raw", "synthetic", "none"):
        root = base / policy / "mlruns"
        result = run_study(_spec(table, root, policy))
        found[policy] = (root, result, token, marker, standardised)
    return found


def _numbers_near(values, targets) -> bool:
    values = np.asarray(values, dtype=np.float64).ravel()
    return any(np.any(np.abs(values - value) <= tolerance) for value, tolerance in targets)


def _scan_bytes(blob: bytes, token: str, targets) -> bool:
    """Whether the token, or a target number as text or as the bytes of a float32/float64,
    appears in ``blob``."""
    if token.encode() in blob:
        return True
    for value, _ in targets:
        for dtype in (np.float32, np.float64):
            if np.asarray(value, dtype).tobytes() in blob:
                return True
    return _numbers_near([float(n) for n in NUMBER.findall(blob)], targets)


def _scan_file(path: Path, token: str, targets) -> bool:
    blob = path.read_bytes()
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            for array in arrays.values():
                if array.dtype.kind in "fiu" and _numbers_near(array, targets):
                    return True
                if array.dtype.kind == "U" and any(token in str(v) for v in array.ravel()):
                    return True
    if zipfile.is_zipfile(path):  # .pt2, .ckpt, .npz: each member as stored, decompressed
        with zipfile.ZipFile(path) as archive:
            if any(_scan_bytes(archive.read(m), token, targets) for m in archive.namelist()):
                return True
    if path.suffix == ".png":  # pixels; no number or text is stored as such
        return token.encode() in blob
    return _scan_bytes(blob, token, targets)


def _scan_database(path: Path, token: str, targets) -> list[str]:
    hits = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, str):
                        hit = _scan_bytes(value.encode(), token, targets)
                    elif isinstance(value, bytes):
                        hit = _scan_bytes(value, token, targets)
                    elif isinstance(value, int | float):
                        hit = _numbers_near([value], targets)
                    else:
                        hit = False
                    if hit:
                        hits.append(f"{path.name}:{table}")
    return hits


def _where(root: Path, token: str, marker: float | None = None, standardised: float = 0.0):
    """Every place under ``root`` that holds the identifier token or, when given, the marker (as
    itself or standardised): database tables by name, other files by path."""
    targets = [] if marker is None else [(marker, 0.5), (standardised, 1e-4)]
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".db":
            hits += _scan_database(path, token, targets)
        elif _scan_file(path, token, targets):
            hits.append(str(path.relative_to(root)))
    return hits


def test_raw_logs_the_marked_row_so_the_scan_can_fail(studies):
    root, result, token, marker, standardised = studies["raw"]
    hits = _where(root, "no-identifier-looked-for", marker, standardised)
    assert any(h.endswith("explain/attributions.npz") for h in hits), hits
    assert any(h.endswith("input_example.json") for h in hits), hits
    assert any(h.startswith("mlflow.db:") for h in _where(root, "trial-0"))  # rows are read too


def test_synthetic_logs_no_trace_of_the_marked_row(studies):
    root, result, token, marker, standardised = studies["synthetic"]
    assert result.model_uri is not None and (root / "reports" / "policy.html").is_file()
    assert _where(root, token, marker, standardised) == []
    models = list((root / "artifacts" / "models").glob("*/artifacts"))
    example = json.loads((models[0] / "input_example.json").read_text())
    assert np.asarray(example).shape == (2, 5)  # synthetic rows, of the data's shape
    npz = next(root.rglob("explain/attributions.npz"))
    with np.load(npz) as arrays:
        assert arrays["inputs"].shape == arrays["shap"].shape == (3, 5)
        assert "labels" not in arrays  # synthetic rows have no true label


@pytest.mark.parametrize("policy", ["raw", "synthetic", "none"])
def test_identifiers_never_reach_the_store_and_runs_carry_the_policy(studies, policy: str):
    from mlflow.tracking import MlflowClient

    root, result, token, _, _ = studies[policy]
    assert _where(root, token) == []
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("workbench").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) >= 2  # the study's run and its trial's
    assert {r.data.tags.get("workbench.data_policy") for r in runs} == {policy}


def test_none_logs_a_model_with_its_signature_and_no_rows(studies):
    import mlflow.pytorch
    import torch

    root, result, token, marker, standardised = studies["none"]
    assert _where(root, token, marker, standardised) == []
    (model,) = list((root / "artifacts" / "models").glob("*/artifacts"))
    files = {p.name for p in model.rglob("*")}
    assert "input_example.json" not in files and "serving_input_example.json" not in files
    assert "tensor-spec" in (model / "MLmodel").read_text()  # the signature, without an example
    network = mlflow.pytorch.load_model(result.model_uri)
    assert network(torch.zeros(4, 5)).shape == (4, 2)
    explained = {p.name for p in next(root.rglob("explain/trust.json")).parent.iterdir()}
    assert explained == {"trust.json", "faithfulness.png"}


def test_a_data_file_in_the_checkout_is_cut_out_of_the_logged_diff(tmp_path: Path):
    from workbench.tracking import without_data_files

    def patch(path: str, line: str) -> str:
        return f"diff --git a/{path} b/{path}\nnew file mode 100644\n+{line}\n"

    diff = patch("notes.md", "kept") + patch("data/people.csv", "ann@mail.test,31")
    diff += patch("data/raw/more.csv", "bob@mail.test,47") + patch("train.py", "kept too")
    env = {"python": "3.12", "git": {"commit": "abc", "dirty": True, "diff": diff}}
    cut = without_data_files(env, [tmp_path / "data" / "people.csv"], root=tmp_path)
    assert "people.csv" not in cut["git"]["diff"] and "more.csv" in cut["git"]["diff"]
    assert cut["git"]["diff"].count("kept") == 2 and env["git"]["diff"] == diff
    folder = without_data_files(env, [tmp_path / "data"], root=tmp_path)["git"]["diff"]
    assert "mail.test" not in folder and folder.count("kept") == 2

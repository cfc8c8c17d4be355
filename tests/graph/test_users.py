"""The user-embedding record and file (copl_ray/graph/users.py): its one writer (the GNN
export), its readers (GNNArtifacts, serving) and its contract checks. Pure torch, no Ray."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from copl_ray.config import load_config
from copl_ray.data.build import build_tables
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.export import ADAPTATION_FILE, FILE_VARIANT, train_gnn_local
from copl_ray.graph.users import (
    ADAPTED,
    COLUMNS,
    FILE_NAME,
    TRAINED,
    UserEmbedding,
    UserEmbeddings,
    UserEmbeddingsError,
    path_in,
)

torch.set_num_threads(1)


def _records() -> list[UserEmbedding]:
    return [
        UserEmbedding("s1", [1.0, 0.0], seen=True, kind=TRAINED),
        UserEmbedding("s0", [0.0, 1.0], seen=True, kind=TRAINED),
        UserEmbedding(
            "u0", [0.6, 0.8], n_neighbors=3, fallback=True, fallback_kind="any_sign", n_unknown=2
        ),
    ]


def test_records_roundtrip_through_the_file(tmp_path):
    path = UserEmbeddings.from_records(_records()).write(tmp_path)
    assert path == tmp_path / FILE_NAME
    schema = pq.read_schema(path)
    assert schema.names == list(COLUMNS)
    assert str(schema.field("n_unknown").type) == "int32"
    table = UserEmbeddings.read(tmp_path)
    assert table.ids == ["s1", "s0", "u0"] and table.matrix.dtype == np.float32
    u0 = table.get("u0")
    assert (u0.seen, u0.kind, u0.n_neighbors, u0.fallback) == (False, ADAPTED, 3, True)
    assert (u0.fallback_kind, u0.n_unknown) == ("any_sign", 2)
    np.testing.assert_array_equal(u0.embedding, np.float32([0.6, 0.8]))
    # the JSON form serving stores is the same record
    assert UserEmbedding.from_dict(u0.to_dict()).to_dict() == u0.to_dict()
    np.testing.assert_array_equal(table.matrix_for(["u0", "s1"]), np.float32([[0.6, 0.8], [1, 0]]))
    assert table.take(["s0", "s1"]).ids == ["s0", "s1"]
    assert table.trained().ids == ["s1", "s0"] and table.adapted_unseen().ids == ["u0"]


def test_a_file_without_the_newer_columns_still_reads(tmp_path):
    frame = (
        UserEmbeddings.from_records(_records()).frame().drop(columns=["fallback_kind", "n_unknown"])
    )
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / FILE_NAME)
    u0 = UserEmbeddings.read(tmp_path).get("u0")
    assert (u0.fallback_kind, u0.n_unknown, u0.n_neighbors) == ("", 0, 3)


def test_contract_violations_name_the_file_and_the_user(tmp_path):
    with pytest.raises(UserEmbeddingsError, match=f"{FILE_NAME}: missing"):
        UserEmbeddings.read(tmp_path)
    frame = UserEmbeddings.from_records(_records()).frame()
    pq.write_table(pa.Table.from_pandas(frame.drop(columns="kind")), path_in(tmp_path))
    with pytest.raises(UserEmbeddingsError, match=r"missing column\(s\) \['kind'\]"):
        UserEmbeddings.read(tmp_path)
    with pytest.raises(UserEmbeddingsError, match="user_id 's0' appears more than once"):
        UserEmbeddings.concat(
            UserEmbeddings.from_records(_records()[1:2]), UserEmbeddings.from_records(_records())
        )
    table = UserEmbeddings.from_records(_records(), "users.parquet")
    with pytest.raises(UserEmbeddingsError, match="users.parquet: no embedding for eval user 'x'"):
        table.matrix_for(["s0", "x"], "eval")


def test_artifacts_read_the_trained_users_in_graph_order(tmp_path):
    art = GNNArtifacts(
        ["s0", "s1"],
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        np.arange(2),
        torch.eye(2),
        torch.tensor([[0], [0]]),
        torch.tensor([[1], [1]]),
        normalized=True,
    )
    art.save(tmp_path)
    UserEmbeddings.from_records(_records()).write(tmp_path)  # file order s1, s0, u0
    back = GNNArtifacts.load(tmp_path)
    torch.testing.assert_close(back.user_embeddings, art.user_embeddings)
    UserEmbeddings.from_records(_records()[:1] + _records()[2:]).write(tmp_path)  # no s0
    with pytest.raises(UserEmbeddingsError, match="no embedding for graph \\(trained\\) user 's0'"):
        GNNArtifacts.load(tmp_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A short pure-torch GNN run whose first unseen user has no survey label left."""
    cfg = load_config(
        "tiny",
        [
            "data.n_users=60",
            "data.n_unseen_users=6",
            "gnn.dim=16",
            "gnn.epochs=3",
            "gnn.tsne=false",
        ],
    )
    tables = build_tables(cfg)
    users = tables.users
    bare = str(users.loc[~users["seen"].astype(bool), "user_id"].iloc[0])
    ann = tables.annotations
    keep = ~((ann["user_id"].astype(str) == bare) & (ann["split"] == "survey"))
    tables = dataclasses.replace(tables, annotations=ann[keep].reset_index(drop=True))
    out = tmp_path_factory.mktemp("gnn")
    metrics = train_gnn_local(cfg, tables, out)
    return cfg, tables, out, metrics, bare


def test_export_writes_one_record_per_user_with_its_adaptation(exported):
    cfg, tables, out, metrics, bare = exported
    table = UserEmbeddings.read(out)
    truth = tables.users.assign(user_id=tables.users["user_id"].astype(str)).set_index("user_id")
    assert sorted(table.ids) == sorted(truth.index)
    assert (table.meta["seen"].to_numpy() == truth.loc[table.ids, "seen"].to_numpy()).all()
    assert set(table.seen().meta["kind"]) == {TRAINED}
    unseen = table.adapted_unseen()
    assert len(unseen) == 6
    # the offline adaptation's fields land in the file: it equals the adaptation table's rows
    adaptation = pd.read_parquet(out / ADAPTATION_FILE)
    weighted = adaptation[adaptation["variant"] == FILE_VARIANT].drop(columns="variant")
    assert list(weighted.columns) == list(COLUMNS)
    for col in ("user_id", "seen", "kind", "n_neighbors", "fallback", "fallback_kind", "n_unknown"):
        assert list(weighted[col]) == list(unseen.meta[col]), col
    np.testing.assert_array_equal(np.stack(weighted["embedding"]), unseen.matrix)
    stats = metrics["adaptation"][FILE_VARIANT]
    assert stats["n_unknown_labels"] == int(unseen.meta["n_unknown"].sum())
    assert stats["n_fallback"] == int(unseen.meta["fallback"].sum())
    # the unseen user without a label: the mean seen user, flagged
    art = GNNArtifacts.load(out)
    rec = table.get(bare)
    assert (rec.fallback, rec.fallback_kind, rec.n_neighbors, rec.n_unknown) == (
        True,
        "mean_user",
        0,
        0,
    )
    np.testing.assert_allclose(rec.embedding, art.mean_user().numpy(), atol=1e-7)
    # GNNArtifacts reads back the trained rows in graph node order
    np.testing.assert_array_equal(
        art.user_embeddings.numpy(), table.matrix_for(art.user_ids, "graph")
    )

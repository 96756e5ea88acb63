"""Ray Train's checks that need no cluster (radclip.io.ray_train): refusals and checkpoint clean-up."""

from __future__ import annotations

import pytest

from radclip.io.ray_train import ClusterConfigError, refuse_local_store_on_a_cluster

LOCAL_STORES = ["sqlite:////srv/radclip/mlflow.db", "file:///srv/radclip/mlruns", "/srv/radclip/mlruns"]


@pytest.mark.parametrize("uri", LOCAL_STORES)
def test_a_local_store_is_refused_on_a_cluster_of_several_nodes(uri):
    with pytest.raises(ClusterConfigError, match=r"cluster of 2 nodes.*cannot reach.*tracking server") as error:
        refuse_local_store_on_a_cluster(uri, 2, "ray://head:10001")
    assert uri in str(error.value) and "ray://head:10001" in str(error.value)


@pytest.mark.parametrize(("uri", "nodes"), [("http://mlflow.internal:5000", 2), ("https://mlflow.example.org", 8),
                                            ("sqlite:////srv/radclip/mlflow.db", 1)])
def test_a_tracking_server_or_a_single_node_is_accepted(uri, nodes):
    refuse_local_store_on_a_cluster(uri, nodes, "auto")  # raises nothing


def test_an_unset_checkpoint_storage_is_refused_on_several_nodes_and_accepted_on_one():
    from radclip.io.ray_train import refuse_default_storage_on_a_cluster

    with pytest.raises(ClusterConfigError, match=r"cluster of 3 nodes.*ray\.storage_path is not set.*s3://") as error:
        refuse_default_storage_on_a_cluster(None, 3, "10.0.0.1:6379")
    assert "10.0.0.1:6379" in str(error.value)
    refuse_default_storage_on_a_cluster(None, 1, "auto")  # one node: its own scratch folder works
    refuse_default_storage_on_a_cluster("s3://radclip-checkpoints/ray", 3, "auto")
    refuse_default_storage_on_a_cluster("/mnt/shared/ray", 3, "auto")


def test_a_finished_runs_checkpoints_are_deleted_from_a_folder_or_an_object_store_uri(tmp_path):
    from radclip.io.ray_train import delete_run_storage

    for name in ("finished", "other"):
        (tmp_path / name / "checkpoint_000001").mkdir(parents=True)
        (tmp_path / name / "checkpoint_000001" / "state.json").write_text("{}")
    delete_run_storage(str(tmp_path), "finished")
    assert not (tmp_path / "finished").exists() and (tmp_path / "other" / "checkpoint_000001").is_dir()
    delete_run_storage(f"file://{tmp_path}", "other")  # a URI goes through pyarrow's filesystem
    assert not (tmp_path / "other").exists()
    delete_run_storage(f"file://{tmp_path}", "never-there")  # nothing to delete is not an error

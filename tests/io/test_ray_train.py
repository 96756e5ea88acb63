"""Ray Train's checks that need no cluster (radclip.io.ray_train)."""

from __future__ import annotations

import pytest

from radclip.io.ray_train import ClusterConfigError, refuse_local_store_on_a_cluster

LOCAL_STORES = ["sqlite:////srv/radclip/mlflow.db", "file:///srv/radclip/mlruns", "/srv/radclip/mlruns"]


@pytest.mark.parametrize("uri", LOCAL_STORES)
def test_a_local_store_is_refused_on_a_cluster_of_several_nodes(uri):
    with pytest.raises(ClusterConfigError, match=r"cluster of 2 nodes.*cannot write.*tracking server") as error:
        refuse_local_store_on_a_cluster(uri, 2, "ray://head:10001")
    assert uri in str(error.value) and "ray://head:10001" in str(error.value)


@pytest.mark.parametrize(("uri", "nodes"), [("http://mlflow.internal:5000", 2), ("https://mlflow.example.org", 8),
                                            ("sqlite:////srv/radclip/mlflow.db", 1)])
def test_a_tracking_server_or_a_single_node_is_accepted(uri, nodes):
    refuse_local_store_on_a_cluster(uri, nodes, "auto")  # raises nothing

"""A Ray address whose port is not a number is one clear line (engine/run/cluster.py: _connect)."""

import pytest

pytest.importorskip("ray")

from engine.run.cluster import ClusterError, _connect  # noqa: E402


@pytest.mark.parametrize("address, said", [
    ("127.0.0.1:notaport", "invalid literal for int()"),  # a ValueError: it has no strerror
    ("127.0.0.1:9", "Connection refused"),  # an OSError: its strerror
])
def test_an_unusable_address_is_one_line_naming_it(address, said):
    with pytest.raises(ClusterError) as e:
        _connect(address)
    line = str(e.value)
    assert "\n" not in line and f"no Ray cluster is reachable at {address} ({said}" in line

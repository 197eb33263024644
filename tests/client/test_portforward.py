"""``fleet port-forward``'s spec and frames (the forwarding itself: tests/operator)."""

from __future__ import annotations

import pytest

from backend.client.portforward import ForwardSpec
from backend.protocol import portforward as pf


def test_forward_specs_parse_as_ssh_l_does() -> None:
    assert ForwardSpec.parse("8080:127.0.0.1:80") == ForwardSpec("127.0.0.1", 8080, "127.0.0.1", 80)
    assert ForwardSpec.parse("0.0.0.0:2222:[::1]:22") == ForwardSpec("0.0.0.0", 2222, "::1", 22)
    with pytest.raises(ValueError, match="LOCAL_PORT:REMOTE_HOST:REMOTE_PORT"):
        ForwardSpec.parse("8080:80")
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        ForwardSpec.parse("8080:host:0")
    assert pf.split_frame(pf.data_frame("c1", b"x")) == ("c1", b"x")

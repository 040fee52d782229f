"""Process-wide limits the proxy sets at start-up: open files and malloc arenas."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from olol.proxy import limit_malloc_arenas, raise_fd_limit


def test_the_open_file_limit_is_raised_to_fit_the_connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        want = 3000
        if hard != resource.RLIM_INFINITY and hard < want + 512:
            pytest.skip(f"hard open-file limit {hard} is below the test's need")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert raise_fd_limit(want) == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want + 512
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_fewer_connections_fit_under_a_low_hard_limit():
    code = (
        "import resource; from olol.proxy import raise_fd_limit;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600));"
        "print(raise_fd_limit(4096))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) == 600 - 512


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_are_capped_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert limit_malloc_arenas(2) is True

"""`gateway-worker` refuses a bad configuration before it loads anything or opens a port."""

from __future__ import annotations

import pytest

from worker.cli import main


def test_real_mode_needs_a_weights_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--variant", "dev"]) == 2
    assert "--weights-dir" in capsys.readouterr().err


def test_settings_errors_name_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tiny", "--device", "tpu"]) == 2
    assert "device" in capsys.readouterr().err
    assert main(["--tiny", "--max-queue", "-1"]) == 2
    assert "max_queue" in capsys.readouterr().err


def test_an_unknown_variant_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--variant", "huge"])
    assert info.value.code == 2

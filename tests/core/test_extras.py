"""The optional-dependency check names the extra to install."""

import pytest

from bsr_hub.core.extras import MissingExtraError, require


def test_missing_module_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"train.py needs no_such_module_bsr: pip install 'bsr-hub\[train\]'"):
        require("json", "no_such_module_bsr", extra="train", what="train.py")


def test_present_modules_pass_and_the_first_is_returned():
    import json

    assert require("json", "os", extra="train") is json

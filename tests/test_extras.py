"""The optional-dependency check names the extra to install."""

import pytest

from bsr_hub.extras import MissingExtraError, require_extra


def test_missing_module_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"train.py needs no_such_module_bsr: pip install 'bsr-hub\[train\]'"):
        require_extra("train", "json", "no_such_module_bsr", what="train.py")


def test_present_modules_pass():
    require_extra("train", "json", "os")

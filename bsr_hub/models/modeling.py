"""`BSRModel`: the BSR network (`network.py`) with the Hub around it and `upscale` on top.

Strict loading and bundled checkpoints live in `hub.py`, the records and the model card in `records.py` and
`card.py`; the image handling behind `upscale` is the `inference` layer's.
"""

from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from huggingface_hub.utils import HfHubHTTPError

from ..core import write_atomically
from ..inference import upscale as upscale_image
from .card import CARD_METADATA, carry_records, how_to_load, render_model_card
from .configuration import BSRConfig
from .hub import PushError, is_transfer_failure, load_pretrained, push_failure
from .network import BSRNetwork
from .records import carried_source


class BSRModel(
    BSRNetwork,
    PyTorchModelHubMixin,
    **{**CARD_METADATA, "tags": list(CARD_METADATA["tags"])},  # a copy: the mixin appends to the list it gets
    paper_url="https://doi.org/10.23919/ituk50268.2020.9303225",
):
    """The BSR network (`network.BSRNetwork`) as a Hub model: `from_pretrained` / `save_pretrained` /
    `push_to_hub` with safetensors, config.json and a model card, and `upscale` for images of any kind.

    `forward` takes (B, 3, h, w) RGB in [0, 1] and returns (B, 3, h*scale, w*scale), not clamped (clamp when
    converting to an image; training losses want the raw values). For images of any kind use `upscale`.
    """

    def __init__(self, config: BSRConfig):
        super().__init__(config)
        # The checkpoint folder `from_pretrained` read: its records follow a `save_pretrained` of unchanged weights.
        self.loaded_from: Path | None = None

    # ------------------------------------------------------------------ construction and introspection

    @classmethod
    def from_preset(cls, name: str, scale: int = 2, **overrides: Any) -> "BSRModel":
        """A freshly initialised model of a named preset (`list_presets()`), at the given scale."""
        return cls(BSRConfig.from_preset(name, scale=scale, **overrides))

    def upscale(self, image: Any, **kwargs: Any) -> Any:
        """Super-resolve a PIL image, numpy array or torch tensor; returns the same kind, `scale` times larger.

        See `bsr_hub.inference.upscale` for the options (tile, tile_overlap, self_ensemble, channels_last).
        """
        return upscale_image(self, image, **kwargs)

    # ------------------------------------------------------------------ Hub integration

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> "BSRModel":
        """Load a model from a bundled checkpoint name, a local folder or a Hub repo id, strictly.

        Unlike the mixin's default, unknown config fields, missing or unexpected weights and shape mismatches
        are errors (`bsr_hub.models.hub.CheckpointError`) that name what is wrong; nothing is loaded partially.
        """
        model, folder = load_pretrained(
            cls,
            pretrained_model_name_or_path,
            map_location=map_location,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        model.loaded_from = folder
        # load_state_dict copies into the existing (CPU) parameters: move the model itself.
        return model.to(map_location).eval()

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        config: Any = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """The mixin's `save_pretrained`, with a card that does not pass this model off as another one.

        The card is named after the folder (or `model_card_kwargs["model_name"]`), not after the preset and scale,
        which name a bundled checkpoint. A model loaded with `from_pretrained` and saved with its weights unchanged
        keeps the loaded checkpoint's records (results, training lineage, robustness: `card.carry_records`) and
        its name; changed weights (fine-tuned, converted to another dtype) get a card that says they are not
        evaluated yet.
        """
        folder = Path(save_directory)
        given = dict(model_card_kwargs or {})
        card = {"model_name": folder.resolve().name, **given}
        card = {**how_to_load(folder, card["model_name"]), **card}
        source = carried_source(self)  # before saving: saved where it came from, its weights would be replaced
        super().save_pretrained(folder, config=config, model_card_kwargs=card)
        if source is not None:
            carry_records(source, folder, model_name=given.get("model_name"))
        if push_to_hub:
            return self.push_to_hub(repo_id or folder.name, config=config, model_card_kwargs=given,
                                    **push_to_hub_kwargs)
        return None

    def push_to_hub(  # type: ignore[override]
        self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> str:
        """The mixin's `push_to_hub`, with the card named after the repository (`me/my-bsr`), not after the temporary
        folder the model is saved in before the upload.

        An upload that does not complete (the connection lost, a storage error) raises `PushError` in one line,
        not huggingface_hub's bare transport error; an answer of the Hub (403: no rights to write there) stays
        huggingface_hub's `HfHubHTTPError`, whose message says why.
        """
        card = {"model_name": repo_id, **(model_card_kwargs or {})}
        try:
            return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)
        except HfHubHTTPError:
            raise
        except Exception as err:  # a transport error, or huggingface_hub's RuntimeError wrapping a failed LFS upload
            if not is_transfer_failure(err):
                raise
            raise PushError(f"{push_failure(repo_id, err)}. The model is unchanged; push again (files the Hub "
                            "already has are not uploaded twice)") from err

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        # channels_last parameters are not contiguous, and safetensors stores contiguous tensors only.
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        target = Path(save_directory) / "model.safetensors"
        # Written beside the target and renamed, so an interrupted save never leaves a truncated checkpoint.
        write_atomically(target, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        return render_model_card(self, **kwargs)

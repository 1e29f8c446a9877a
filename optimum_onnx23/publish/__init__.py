"""Stage 5 of the data flow: a Hub-ready ONNX repo (layout, model card, genai_config.json) pushed with huggingface_hub."""

from .card import CardInputs, build_model_card, validate_model_card
from .cli import add_publish_arguments, check_publish_args, publish_from_args
from .errors import HubRequestError, InvalidRepoIdError, MissingTokenError, ModelCardError, NoOnnxFilesError, PublishError
from .genai_config import make_genai_config
from .layout import HubFile, HubLayout, check_repo_id, plan_hub_layout, save_pretrained
from .onnx_files import OnnxModelFiles, find_onnx_models
from .push import describe_dry_run, push_to_hub

__all__ = [
    "CardInputs",
    "HubFile",
    "HubLayout",
    "HubRequestError",
    "InvalidRepoIdError",
    "MissingTokenError",
    "ModelCardError",
    "NoOnnxFilesError",
    "OnnxModelFiles",
    "PublishError",
    "add_publish_arguments",
    "build_model_card",
    "check_publish_args",
    "check_repo_id",
    "describe_dry_run",
    "find_onnx_models",
    "make_genai_config",
    "plan_hub_layout",
    "publish_from_args",
    "push_to_hub",
    "save_pretrained",
    "validate_model_card",
]

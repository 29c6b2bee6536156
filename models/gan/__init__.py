"""GAN memorization: MR-GAN training with memorization rejection (SPEC §5) and copying tests of generators.

What the workers and the CLI need:
- ``GanConfig``, ``MrganConfig``, ``SweepConfig`` (frozen, validated; ``config_to_dict``/``_from_dict``).
- ``build_feature_space(train, heldout, embedding) -> FeatureSpace`` (embed once), ``resolve_taus``;
  ``feature_space_state`` / ``restore_feature_space`` store it and rebuild it elsewhere without retraining.
- ``run_tau_unit(train, space, tau, gan, train_cfg, sweep, progress=, should_stop=) -> TauResult`` — one unit.
- ``run_sweep(...)`` — every tau in-process.
- ``run_copy_test(train, test, generated, embedding=, copy=) -> CopyTestReport`` and
  ``generate_from_model_file(path, latent_dim, count, image_shape, seed=, device=)`` (a TorchScript or
  ONNX generator, by content; ``generate_from_torchscript`` is the same function).
- ``Cancelled`` is raised when ``should_stop()`` returns True (polled every 25 generator steps).
"""

from models.gan.config import (
    Cancelled,
    GanConfig,
    MrganConfig,
    SweepConfig,
    config_from_dict,
    config_to_dict,
)
from models.gan.evaluate import (
    CopyTestReport,
    generate_from_model_file,
    generate_from_torchscript,
    run_copy_test,
)
from models.gan.sweep import (
    FeatureSpace,
    TauResult,
    build_feature_space,
    feature_space_state,
    resolve_taus,
    restore_feature_space,
    run_sweep,
    run_tau_unit,
)
from models.gan.train import MrganProgress, MrganRun, Rejector, sample_images, train_mrgan

__all__ = [
    "Cancelled",
    "CopyTestReport",
    "FeatureSpace",
    "GanConfig",
    "MrganConfig",
    "MrganProgress",
    "MrganRun",
    "Rejector",
    "SweepConfig",
    "TauResult",
    "build_feature_space",
    "config_from_dict",
    "config_to_dict",
    "feature_space_state",
    "generate_from_model_file",
    "generate_from_torchscript",
    "resolve_taus",
    "restore_feature_space",
    "run_copy_test",
    "run_sweep",
    "run_tau_unit",
    "sample_images",
    "train_mrgan",
]

"""Where fine-tuning and inference may run: the seed's compute checks, as data in and one error out.

Fine-tuning (seed, step 3): the cluster must not have failed provisioning; its VM size must be in
the model's fine-tune allow-list when the model has one, and otherwise not in the list of sizes
the component does not support. The size's GPU count comes from `GPU_COUNTS` below, not from the
region's size catalogue as in the seed: `compute.list_sizes()` is a subscription-scope call
(`.../locations/{loc}/vmSizes`) that the app's identity, AzureML Data Scientist on the workspace
only, is refused (403). A size missing from the table needs TUNEFLOW_AML_FINETUNE_GPUS.
Serverless compute skips the cluster but not the allow-list. Inference (seed, step 7, where the
notebook only printed a warning): the instance type must be in the model's inference allow-list
unless the override is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.modelspec import ModelFacts

SERVERLESS = "serverless"
# Sizes the seed refuses when the model gives no allow-list (K80 GPUs: not supported).
UNSUPPORTED_SIZES = ("standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r")


# GPUs per VM size (Azure's published sizes: NCv3, NDv2, NC A100 v4, ND A100 v4, NC/ND H100 v5, NCasT4 v3).
# Every size the registry's fine-tune allow-lists name is here; keys are lower case.
GPU_COUNTS = {
    "standard_nc6s_v3": 1, "standard_nc12s_v3": 2, "standard_nc24s_v3": 4, "standard_nc24rs_v3": 4,
    "standard_nd40rs_v2": 8,
    "standard_nc24ads_a100_v4": 1, "standard_nc48ads_a100_v4": 2, "standard_nc96ads_a100_v4": 4,
    "standard_nd96asr_v4": 8, "standard_nd96amsr_a100_v4": 8,
    "standard_nc40ads_h100_v5": 1, "standard_nc80adis_h100_v5": 2, "standard_nd96isr_h100_v5": 8,
    "standard_nd96isr_h200_v5": 8,
    "standard_nc4as_t4_v3": 1, "standard_nc8as_t4_v3": 1, "standard_nc16as_t4_v3": 1, "standard_nc64as_t4_v3": 4,
}


def gpu_counts(override: int = 0, vm_size: str = "") -> dict[str, int]:
    """GPU_COUNTS, with `vm_size` given `override` GPUs when the operator set TUNEFLOW_AML_FINETUNE_GPUS."""
    counts = dict(GPU_COUNTS)
    if override and vm_size:
        counts[vm_size.lower()] = override
    return counts


class ComputeUnusable(ValueError):
    """The compute cannot run the job; the message names the setting or SKU to change."""


@dataclass(frozen=True)
class FinetuneCompute:
    compute: str  # a cluster name, or "serverless"
    instance_type: str  # the VM size (the cluster's, or the serverless instance type)
    gpus: int


def check_finetune(facts: ModelFacts, compute: str, vm_size: str, provisioning_state: str,
                   sizes: dict[str, int], setting: str = "TUNEFLOW_AML_FINETUNE_SKU") -> FinetuneCompute:
    """`sizes` maps VM size names (any case) to GPU counts (`gpu_counts()`)."""
    where = "serverless compute" if compute == SERVERLESS else f"compute cluster {compute}"
    if provisioning_state.lower() == "failed":
        raise ComputeUnusable(f"{where} is in provisioning state Failed: fix or recreate it, or set "
                              f"TUNEFLOW_AML_COMPUTE to another cluster (or {SERVERLESS})")
    if not vm_size:
        raise ComputeUnusable(f"{where} has no VM size: set {setting} to one of "
                              f"{', '.join(facts.finetune_skus) or 'the GPU sizes of your workspace'}")
    if facts.finetune_skus:
        if not facts.allows_finetune_on(vm_size):
            raise ComputeUnusable(f"{where} uses {vm_size}, which {facts.name} cannot be fine-tuned on: use one of "
                                  f"{', '.join(facts.finetune_skus)} ({' or '.join(dict.fromkeys((setting, 'TUNEFLOW_AML_COMPUTE')))})")
    elif vm_size.lower() in UNSUPPORTED_SIZES:
        raise ComputeUnusable(f"{where} uses {vm_size}, which fine-tuning does not support: use a GPU size newer "
                              f"than {', '.join(UNSUPPORTED_SIZES)}")
    gpus = {k.lower(): v for k, v in sizes.items()}.get(vm_size.lower())
    if not gpus:
        raise ComputeUnusable(f"{vm_size} is not a GPU size tuneflow knows: fine-tuning needs GPU compute; use one of "
                              f"{', '.join(facts.finetune_skus) or 'the NC/ND GPU sizes'}, or set "
                              f"TUNEFLOW_AML_FINETUNE_GPUS to its GPU count")
    return FinetuneCompute(compute=compute, instance_type=vm_size, gpus=int(gpus))


def check_inference(facts: ModelFacts, instance_type: str, override: bool,
                    setting: str = "TUNEFLOW_INFERENCE_SKU") -> None:
    if not facts.inference_skus or facts.allows_inference_on(instance_type) or override:
        return
    raise ComputeUnusable(f"{instance_type} is not in {facts.name}'s inference allow-list: set {setting} to one of "
                          f"{', '.join(facts.inference_skus)} (or TUNEFLOW_INFERENCE_SKU_OVERRIDE=true to deploy anyway)")

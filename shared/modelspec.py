"""What a registry model says about itself, whatever shape its metadata has.

The azureml registry has described the same facts three ways over time (see
../shared/reference/azureml/): tags (`finetune_compute_allow_list`, `model_specific_defaults`,
`FinetuneRetirementDate`, as the seed reads them), comma-separated `properties`
(`finetune-recommended-sku`), and `system_metadata` (`SKU.finetuneRecommendedSkus`,
`deprecation.finetuneRetirementDate`, `tasks.fineTuningTasks`). Tag values arrive as YAML
structures from a spec file and as strings from the REST API (Python-literal or JSON lists and
dicts). `ModelFacts.from_metadata` reads every one of them; SKU comparisons are case-insensitive.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

CHAT_COMPLETION = "chat-completion"
# What the preflight suggests when the configured model can no longer be fine-tuned: the newest
# active model in ../shared/reference/azureml/ that supports chat-completion fine-tuning.
ACTIVE_ALTERNATIVE = "Phi-4"
SEED_MODEL = "Phi-3-mini-4k-instruct"


class BaseModelUnusable(ValueError):
    """The base model cannot be fine-tuned (archived, retired, or not for chat completion)."""


def as_list(value) -> list[str]:
    """A list of strings from a YAML list, a JSON or Python-literal list, or 'a, b, c'."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(parsed, (list, tuple)):
            return as_list(parsed)
    text = text.strip("[]")
    return [part.strip().strip("'\"") for part in text.split(",") if part.strip().strip("'\"")]


def as_dict(value) -> dict:
    """A dict from a YAML mapping or a JSON / Python-literal string (the seed uses ast.literal_eval)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(str(value))
        except (ValueError, SyntaxError):
            continue
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"not a mapping: {str(value)[:80]!r}")


def _date(value) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _lower_keys(d: dict) -> dict:
    return {str(k).lower(): v for k, v in (d or {}).items()}


@dataclass(frozen=True)
class ModelFacts:
    name: str
    version: str
    id: str
    archived: bool = False
    finetune_skus: tuple[str, ...] = ()
    inference_skus: tuple[str, ...] = ()
    finetune_tasks: tuple[str, ...] = ()
    finetune_retirement: datetime | None = None
    specific_defaults: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, name: str, version: str, id: str = "", tags: dict | None = None,
                      properties: dict | None = None, system_metadata: dict | None = None,
                      archived: bool = False) -> "ModelFacts":
        tags, props, meta = _lower_keys(tags or {}), _lower_keys(properties or {}), system_metadata or {}
        sku = meta.get("SKU") or {}
        deprecation = meta.get("deprecation") or {}
        tasks = meta.get("tasks") or {}
        finetune = (as_list(sku.get("finetuneRecommendedSkus")) or as_list(tags.get("finetune_compute_allow_list"))
                    or as_list(props.get("finetune-recommended-sku")))
        inference = (as_list(sku.get("inferenceRecommendedSkus")) or as_list(tags.get("inference_compute_allow_list"))
                     or as_list(props.get("inference-recommended-sku")))
        ft_tasks = (as_list(tasks.get("fineTuningTasks")) or as_list(props.get("finetuning-tasks"))
                    or as_list(tags.get("task")))
        retirement = _date(deprecation.get("finetuneRetirementDate")) or _date(tags.get("finetuneretirementdate"))
        try:
            defaults = as_dict(tags.get("model_specific_defaults"))
        except ValueError as exc:
            raise BaseModelUnusable(f"model {name} has unreadable model_specific_defaults ({exc})") from None
        return cls(name=name, version=str(version), id=id or f"azureml://registries/azureml/models/{name}/versions/{version}",
                   archived=bool(archived), finetune_skus=tuple(finetune), inference_skus=tuple(inference),
                   finetune_tasks=tuple(t.lower() for t in ft_tasks), finetune_retirement=retirement,
                   specific_defaults=defaults)

    @classmethod
    def from_spec(cls, spec: dict, registry: str = "azureml") -> "ModelFacts":
        """From a registry spec.yaml (as in ../shared/reference/azureml/)."""
        name, version = str(spec.get("name", "")), str(spec.get("version", ""))
        return cls.from_metadata(name, version, f"azureml://registries/{registry}/models/{name}/versions/{version}",
                                 spec.get("tags"), spec.get("properties"), spec.get("system_metadata"),
                                 bool(spec.get("isArchived", False)))

    @classmethod
    def from_entity(cls, model, system_metadata: dict | None = None, archived: bool = False) -> "ModelFacts":
        """From an azure-ai-ml `Model` as `MLClient.models.get` returns it (plus what it leaves out)."""
        return cls.from_metadata(model.name, model.version, model.id, model.tags, model.properties,
                                 system_metadata or getattr(model, "_system_metadata", None) or {}, archived)

    def allows_finetune_on(self, sku: str) -> bool:
        return sku.lower() in {s.lower() for s in self.finetune_skus}

    def allows_inference_on(self, sku: str) -> bool:
        return sku.lower() in {s.lower() for s in self.inference_skus}


def preflight(facts: ModelFacts, now: datetime, setting: str = "TUNEFLOW_BASE_MODEL") -> None:
    """Refuse a base model that cannot be fine-tuned for chat completion, naming what to use instead."""
    use = (f"set {setting}={ACTIVE_ALTERNATIVE} (active, supports chat-completion fine-tuning)"
           if facts.name.lower() != ACTIVE_ALTERNATIVE.lower() else f"set {setting} to an active model")
    if facts.finetune_retirement and facts.finetune_retirement <= now:
        raise BaseModelUnusable(f"base model {facts.name} version {facts.version}: fine-tuning was retired on "
                                f"{facts.finetune_retirement.date().isoformat()}; {use}")
    if facts.archived:
        raise BaseModelUnusable(f"base model {facts.name} version {facts.version} is archived in the registry; {use}")
    if facts.finetune_tasks and CHAT_COMPLETION not in facts.finetune_tasks:
        raise BaseModelUnusable(f"base model {facts.name} supports fine-tuning for {', '.join(facts.finetune_tasks)}, "
                                f"not {CHAT_COMPLETION}; {use}")
